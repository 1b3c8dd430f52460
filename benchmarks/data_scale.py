"""Data stages at scale: events/s and peak memory of ingest, validate and sequences at 1M, 5M and 20M events.

    .venv/bin/python benchmarks/data_scale.py                         # 1M, 5M, 20M events, this checkout
    .venv/bin/python benchmarks/data_scale.py --events 1000000 --code before=/tmp/old-checkout --code now=.
    .venv/bin/python benchmarks/data_scale.py --source files --stages ingest   # the bring-your-own CSV reader

A script, not a test. For every size it writes a synthetic MovieLens-CSV release (``mufasa.data.scale``: ML-25M's
shape, ~150 events per user on a log-normal spread, Zipf-like items) into a scratch project whose params select the
``movielens-csv`` source, then runs the real stage commands one after another, each in its own process, exactly
as DVC runs them: ``python -m mufasa.cli stage <name> --root <project> --no-track`` (tracking off: this measures
the data path, not MLflow). Per stage: wall time, events/s (events in the dataset / wall time) and peak resident
memory of the stage's process (``ru_maxrss`` from ``os.wait4``, so it includes the interpreter and its imports;
the ``imports`` row is a process that only imports the stage code; "after startup" divides by the wall time
minus that row's).

``--code LABEL=PATH`` (repeatable) runs the stages from other checkouts of this project (e.g. a ``git worktree`` of
an older commit) on the same generated data in the same run, so versions are compared side by side on the same
noisy machine. Writes ``benchmarks/results/data-scale.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mufasa.data.scale import write_movielens_csv  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
STAGES = ("ingest", "validate", "sequences")


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, int, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB of that process, exit code, output tail)."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty child can never block on a full pipe
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read().decode(errors="replace")
    return wall, usage.ru_maxrss / 1024.0, proc.returncode, out[-2000:]


def make_project(folder: Path, data: Path, source: str) -> None:
    """A scratch project (params.yaml + dvc.yaml from this repo) whose ingest reads ``data``: as the MovieLens CSV
    release it is (``movielens-csv``), or as bring-your-own files with the MovieLens columns renamed (``files``)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["source"] = source
    params["ingest"]["movielens_csv"]["path"] = str(data)
    params["ingest"]["files"].update(
        interactions=str(data / "ratings.csv"),
        items=str(data / "movies.csv"),
        rename={"userId": "user_id", "movieId": "item_id"},
        image_root=None,
    )
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    ap.add_argument("--code", action="append", default=[], help="LABEL=PATH of a checkout to run the stages from")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mufasa-data-scale"), help="scratch folder")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--source", choices=["movielens-csv", "files"], default="movielens-csv",
                    help="ingest source reading the generated release (files: the bring-your-own CSV reader)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run, in order")
    ap.add_argument("--out", type=Path, default=None, help="output stem (default results/data-scale[-files])")
    args = ap.parse_args()
    out = args.out or RESULTS / ("data-scale" if args.source == "movielens-csv" else "data-scale-files")
    codes = dict(c.split("=", 1) for c in args.code) if args.code else {"this checkout": str(REPO)}
    codes = {label: Path(path).resolve() for label, path in codes.items()}

    rows = []
    shutil.rmtree(args.work, ignore_errors=True)
    for label, code in codes.items():
        env = dict(os.environ, PYTHONPATH=str(code))
        wall, rss, rc, tail = run_measured(
            [sys.executable, "-c", "import mufasa.cli, mufasa.pipeline.stages"], code, env
        )
        rows.append({"code": label, "events": 0, "stage": "imports", "seconds": wall, "peak_mb": rss, "rc": rc})
    for n in args.events:
        data = args.work / f"data-{n}"
        t0 = time.perf_counter()
        ds = write_movielens_csv(data, n, seed=0)
        gen_s = time.perf_counter() - t0
        size_mb = (data / "ratings.csv").stat().st_size / 2**20
        print(f"{n:,} events: {ds.n_users:,} users, {ds.n_items:,} items, ratings.csv {size_mb:.0f} MB "
              f"(generated in {gen_s:.1f} s)", flush=True)
        for label, code in codes.items():
            project = args.work / f"project-{n}-{len(rows)}"
            make_project(project, data, args.source)
            env = dict(os.environ, PYTHONPATH=str(code))
            for stage in args.stages:
                cmd = [sys.executable, "-m", "mufasa.cli", "stage", stage, "--root", str(project), "--no-track"]
                wall, rss, rc, tail = run_measured(cmd, code, env)
                row = {
                    "code": label, "events": n, "users": ds.n_users, "items": ds.n_items, "stage": stage,
                    "seconds": wall, "events_per_s": n / wall, "peak_mb": rss, "rc": rc,
                }
                rows.append(row)
                print(f"  [{label}] {stage:9s} {wall:7.1f} s  {n / wall / 1e6:6.2f} M events/s  "
                      f"peak {rss:7.0f} MB  rc {rc}", flush=True)
                if rc != 0:
                    print(tail, flush=True)
                    break
            shutil.rmtree(project, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
        write(rows, codes, out, args.source)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    write(rows, codes, out, args.source)


def write(rows: list[dict], codes: dict[str, Path], out: Path, source: str) -> None:
    meta = {
        "source": source,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "codes": {k: str(v) for k, v in codes.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Data stages at scale (ingest -> validate -> sequences)",
        "",
        f"{meta['date']}; {meta['machine']}; Python {meta['python']}. Synthetic MovieLens-CSV releases "
        f"(`mufasa.data.scale`) read by the `{source}` ingest source, each stage as its own `python -m mufasa.cli stage <name> --no-track` process; "
        "peak = the process's max RSS (interpreter and imports included; see the imports row). "
        f"Command: `.venv/bin/python benchmarks/data_scale.py --source {source}`.",
        "",
        "| code | events | stage | seconds | M events/s | M events/s after startup | peak MB |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    startup = {r["code"]: r["seconds"] for r in rows if r["stage"] == "imports"}
    for r in rows:
        rate = net = ""
        if r["events"]:
            rate = f"{r['events_per_s'] / 1e6:.2f}"
            work = r["seconds"] - startup.get(r["code"], 0.0)
            net = f"{r['events'] / work / 1e6:.2f}" if work > 0 else ""
        failed = "" if r["rc"] == 0 else f" (exit {r['rc']})"
        lines.append(
            f"| {r['code']} | {r['events']:,} | {r['stage']}{failed} | {r['seconds']:.1f} | {rate} | {net} "
            f"| {r['peak_mb']:,.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
