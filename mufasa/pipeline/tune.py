"""``mufasa tune``: Optuna search over MUFASA's SAL settings, scored on the validation split only.

Each trial trains MUFASA (SAL over the stored fused MFL vectors) with ``train_sal``'s early stopping and returns
its best validation NDCG@10; the test split is never read: the trainer gets a data object whose ``test``
raises (:class:`ValidationOnly`). Every trial is a nested MLflow run (params, per-epoch curves, the score) under
one parent run per search. The study lives in an Optuna journal file, so ``--workers`` processes share it and an
interrupted search resumes where it stopped. The summary (every trial, the best values) goes to
``<out>.json`` / ``.md``; the chosen values are copied into ``params.yaml`` by hand, citing that file.

Search space (``SPACE``): regularisation, width and depth, learning rate and batch size, and how the multimodal
signal enters: the time-gap encoding and whether the fused vectors also shape the output (scoring) table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from mufasa.data.io import write_json, write_text
from mufasa.pipeline.params import params_to_dict, quiet
from mufasa.pipeline.paths import ProjectPaths

# name -> (kind, choices or (low, high)); "model." keys are SALConfig fields, "train." keys SALTrainConfig fields
SPACE: dict[str, tuple[str, Any]] = {
    "model.dropout": ("float", (0.1, 0.6)),
    "model.attn_dropout": ("float", (0.0, 0.6)),
    "model.d_model": ("categorical", (32, 64, 128)),
    "model.n_layers": ("categorical", (1, 2, 3)),
    "model.time_encoding": ("categorical", (True, False)),
    "model.fused_in_output": ("categorical", (True, False)),
    "train.lr": ("log", (3e-4, 3e-3)),
    "train.batch_size": ("categorical", (8, 16, 32)),
    # The MFL is retrained per trial with these, so its checkpoint (how long it trains) and the weight of its
    # collaborative alignment are chosen by what they do downstream: SAL's validation NDCG@10.
    "mfl.train.epochs": ("categorical", (5, 20, 100)),
    "mfl.losses.collaborative": ("log", (0.25, 4.0)),
}


class ValidationOnly:
    """Wraps :class:`~mufasa.evaluation.protocol.EvalData`; reading ``test`` raises, everything else passes."""

    def __init__(self, data):
        self._data = data

    @property
    def test(self):
        raise PermissionError("tuning must never read the test split")

    def __getattr__(self, name: str):
        return getattr(self._data, name)


def suggest(trial) -> dict[str, Any]:
    values = {}
    for name, (kind, spec) in SPACE.items():
        if kind == "categorical":
            values[name] = trial.suggest_categorical(name, list(spec))
        else:
            values[name] = trial.suggest_float(name, spec[0], spec[1], log=kind == "log")
    return values


def with_values(params, values: dict[str, Any]):
    """``params`` with ``values`` applied: "model.x" / "train.y" -> ``train_sal.model`` / ``train_sal.train``;
    "mfl.train.z" -> ``train_mfl.train``; "mfl.losses.w" -> ``train_mfl.train.losses``."""
    prefixes = ("model.", "train.", "mfl.train.", "mfl.losses.")
    unknown = [k for k in values if not k.startswith(prefixes)]
    if unknown:
        raise ValueError(f"tune values must start with one of {prefixes}: {unknown}")

    def pick(prefix: str) -> dict[str, Any]:
        return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}

    sal, mfl = params.train_sal, params.train_mfl
    try:
        mfl_train = dataclasses.replace(mfl.train, **pick("mfl.train."))
        if pick("mfl.losses."):
            mfl_train = dataclasses.replace(mfl_train, losses=dataclasses.replace(mfl_train.losses, **pick("mfl.losses.")))
        sal = dataclasses.replace(sal, model=dataclasses.replace(sal.model, **pick("model.")),
                                  train=dataclasses.replace(sal.train, **pick("train.")))
    except TypeError as exc:  # a field the config does not have
        raise ValueError(f"tune values name an unknown field: {exc}") from exc
    return dataclasses.replace(params, train_sal=sal, train_mfl=dataclasses.replace(mfl, train=mfl_train))


def _objective(params, paths: ProjectPaths, inputs, tracker, search_key: str):
    from mufasa.pipeline.sal_model import train_variant

    def objective(trial) -> float:
        values = suggest(trial)
        trial_params = with_values(params, values)
        with tracker.stage_run(f"trial-{trial.number}", search_key, tags={"mufasa.role": "tune-trial"}) as run:
            run.log_params({**values, "trial": trial.number})
            t0 = time.perf_counter()
            trial_inputs = inputs
            if any(k.startswith("mfl.") for k in values) and params.train_mfl.enabled:
                from mufasa.pipeline.mfl_model import fit_mfl

                fused = fit_mfl(trial_params, paths, checkpoint=False).result.fused.astype("float32")
                trial_inputs = dataclasses.replace(inputs, fused=fused)
            _, _, result = train_variant(
                trial_params,
                trial_inputs,
                paths.root,
                f"tune-{search_key}-{trial.number}",
                on_metrics=lambda step, m: run.log_metrics(m, step=step),
            )
            score = float(result.best["val_ndcg@10"])
            run.log_metrics(
                {"best_val_ndcg@10": score, "best_epoch": float(result.best["epoch"]),
                 "epochs_run": float(result.epochs_run), "seconds": time.perf_counter() - t0}
            )
        trial.set_user_attr("best_epoch", int(result.best["epoch"]))
        trial.set_user_attr("val_hr@10", float(result.best.get("val_hr@10", float("nan"))))
        return score

    return objective


def _worker(params, paths: ProjectPaths, journal: str, study_name: str, n_trials: int, timeout, search_key: str,
            tracking: bool, threads: int | None) -> None:
    import optuna
    import torch

    from mufasa.pipeline.tracking import NullTracker, Tracker
    from mufasa.pipeline.sal_model import load_inputs

    if threads is not None:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    inputs = load_inputs(paths)
    inputs = dataclasses.replace(inputs, data=ValidationOnly(inputs.data))
    tracker = Tracker.for_project(paths.root, params.tracking.experiment) if tracking else NullTracker()
    study = optuna.load_study(study_name=study_name, storage=_storage(journal))
    study.optimize(_objective(params, paths, inputs, tracker, search_key), n_trials=n_trials, timeout=timeout)


def _storage(journal: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(journal))


def run_tune(
    params,
    paths: ProjectPaths,
    out: Path,
    n_trials: int,
    timeout: float | None = None,
    seed: int = 0,
    workers: int = 1,
    tracking: bool = True,
    study_name: str = "mufasa-sal",
) -> dict:
    """Run (or resume) the search; write and return the summary. ``n_trials`` counts this call's new trials."""
    import optuna

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = str(out.with_suffix(".optuna.jsonl"))
    quiet_params = quiet(params)
    optuna.create_study(
        study_name=study_name,
        storage=_storage(journal),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=8),
        load_if_exists=True,
    )
    search_key = f"tune-{study_name}"
    started = time.perf_counter()
    from mufasa.pipeline.tracking import NullTracker, Tracker

    # The search's own run is created here, before any worker starts: it creates (migrates) the store once, so
    # parallel workers never race to set up a fresh SQLite store, and the summary lands beside the trials.
    tracker = Tracker.for_project(paths.root, params.tracking.experiment) if tracking else NullTracker()
    with tracker.stage_run("search", search_key, tags={"mufasa.role": "tune-search"}) as search_run:
        search_run.log_params({"study": study_name, "trials": n_trials, "workers": workers, "seed": seed})
        _run_workers(quiet_params, paths, journal, study_name, n_trials, timeout, search_key, tracking, workers)
        study = optuna.load_study(study_name=study_name, storage=_storage(journal))
        payload = _summarise(study, params, out, time.perf_counter() - started)
        search_run.log_metrics({"best_val_ndcg@10": payload["best"]["value"], "trials": len(payload["trials"])})
        for suffix in (".json", ".md"):
            search_run.log_artifact(out.with_suffix(suffix))
    return payload


def _run_workers(params, paths, journal, study_name, n_trials, timeout, search_key, tracking, workers) -> None:
    import multiprocessing

    if workers <= 1:
        _worker(params, paths, journal, study_name, n_trials, timeout, search_key, tracking, None)
    else:
        ctx = multiprocessing.get_context("spawn")
        share = [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
        procs = [
            ctx.Process(target=_worker, args=(params, paths, journal, study_name, n, timeout, search_key, tracking, 1))
            for n in share if n > 0
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"tuning workers failed with exit codes {failed}")


def _summarise(study, params, out: Path, seconds: float) -> dict:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError("no trial completed")
    best = study.best_trial
    payload = {
        "objective": "best validation NDCG@10 (early stopping on it), test split never read",
        "sampler": "TPE (seeded), 8 random start-up trials",
        "space": {k: [kind, list(spec)] for k, (kind, spec) in SPACE.items()},
        "base": params_to_dict(params)["train_sal"],
        "best": {"number": best.number, "value": best.value, "params": best.params, **best.user_attrs},
        "trials": [
            {"number": t.number, "value": t.value, "params": t.params, **t.user_attrs} for t in done
        ],
        "seconds_this_call": seconds,
    }
    write_json(payload, out.with_suffix(".json"))
    ranked = sorted(done, key=lambda t: t.value, reverse=True)
    keys = list(SPACE)
    lines = [
        f"# `mufasa tune`: {len(done)} trials, validation NDCG@10 (test never read)",
        "",
        "| trial | val NDCG@10 | best epoch | " + " | ".join(keys) + " |",
        "|---:|---:|---:|" + "---|" * len(keys),
    ]
    for t in ranked:
        cells = [f"{t.params[k]:.4g}" if isinstance(t.params[k], float) else str(t.params[k]) for k in keys]
        lines.append(f"| {t.number} | {t.value:.4f} | {t.user_attrs.get('best_epoch', '')} | " + " | ".join(cells) + " |")
    write_text("\n".join(lines) + "\n", out.with_suffix(".md"))
    return payload


def summary(payload: dict) -> str:
    return json.dumps(payload["best"], indent=2)
