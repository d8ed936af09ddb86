#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU and torch (no network needed):
#   1. builds the extension for the local GPU only (pip install --no-build-isolation --no-deps -e .)
#   2. runs every test that needs CUDA (pytest -m cuda: the cuda cases of the op tests, tests/gpu)
#   3. runs the GPU sweep (benchmarks/bench_gpu.py, time-boxed), then add_lora_slices on
#      Llama-3-8B's qkv / gate_up against add_lora per slice, torch._grouped_mm, the torch
#      reference and torch.mm for one adapter (time-boxed too), writing OUTDIR/<gpu>.json (the
#      slices under "slices"), OUTDIR/<gpu>.png, OUTDIR/<gpu>-slices.png, OUTDIR/<gpu>.log
#   4. prints the short tables last
# Everything is also logged to OUTDIR/gpu_check.log. Designed to finish in well under 8 minutes
# on an H200 with 16 cores.
#
# Usage: benchmarks/gpu_check.sh [OUTDIR]          (default: benchmarks/results)
# Environment:
#   PYTHON                 interpreter (default: python, else python3)
#   TORCH_CUDA_ARCH_LIST   default: the local GPU's compute capability (e.g. 9.0)
#   MAX_JOBS               parallel compile jobs (default: nproc)
#   DEADLINE               seconds the whole script aims at (default 420); of what the build and
#                          the tests left (less 30 s), add_lora_slices gets a sixth (10 to 45 s)
#                          and the sweep the rest (60 to 300 s)
#   SWEEP_BUDGET           fixed sweep time budget in seconds (overrides DEADLINE's share)
#   SLICES_BUDGET          fixed add_lora_slices time budget in seconds (0: leave them out)
#   TESTS_TIMEOUT          seconds before the CUDA tests are stopped (default 240)
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
OUTDIR=${1:-benchmarks/results}
mkdir -p "$OUTDIR" || exit 2
LOG="$OUTDIR/gpu_check.log"
: >"$LOG"
PY=${PYTHON:-$(command -v python || command -v python3)}
START=$(date +%s)
DEADLINE=${DEADLINE:-420}

say() { echo "== $* ($(($(date +%s) - START)) s)" | tee -a "$LOG"; }

# --- the local GPU ---------------------------------------------------------------------------
if ! CAP=$("$PY" -c 'import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("%d.%d" % torch.cuda.get_device_capability())' 2>>"$LOG"); then
    tail -3 "$LOG"
    echo "gpu_check: no usable GPU (torch.cuda.is_available() is False or torch is missing)." | tee -a "$LOG"
    exit 2
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$CAP}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export LORA_KERNELS_CUDA=1 # fail rather than fall back to a CPU-only build
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__,
      "| CUDA", torch.version.cuda, "|", torch.cuda.get_device_name())' 2>&1 | tee -a "$LOG"

# --- 1. build --------------------------------------------------------------------------------
say "build: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . >>"$LOG" 2>&1; then
    tail -40 "$LOG"
    echo "gpu_check: the build failed (full log: $LOG)."
    exit 1
fi
if ! "$PY" -c 'import lora_kernels as lk; info = lk.build_info(); print(info)
assert info["cuda"], "the extension was built without CUDA"' 2>&1 | tee -a "$LOG"; then
    echo "gpu_check: the built extension does not load with CUDA (log: $LOG)."
    exit 1
fi

# --- 2. the CUDA tests -----------------------------------------------------------------------
say "CUDA tests (pytest -m cuda tests)"
TIMEOUT=()
command -v timeout >/dev/null && TIMEOUT=(timeout "${TESTS_TIMEOUT:-240}")
"${TIMEOUT[@]}" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tee -a "$LOG"
TESTS_RC=${PIPESTATUS[0]}

# --- 3. the sweep ----------------------------------------------------------------------------
ELAPSED=$(($(date +%s) - START))
REMAIN=$((DEADLINE - ELAPSED - 30))
clamp() { echo $(($1 < $2 ? $2 : ($1 > $3 ? $3 : $1))); }
SLICES=${SLICES_BUDGET:-$(clamp $((REMAIN / 6)) 10 45)}
BUDGET=${SWEEP_BUDGET:-$(clamp $((REMAIN - SLICES)) 60 300)}
say "sweep: time budget ${BUDGET} s, then add_lora_slices: ${SLICES} s (cases not started by then are listed as not run)"
# progress lines (stderr) to the terminal and the log; the summary (stdout) to the log, shown below
"$PY" benchmarks/bench_gpu.py --outdir "$OUTDIR" --time-budget "$BUDGET" --slices-budget "$SLICES" \
    2> >(tee -a "$LOG" >&2) >>"$LOG"
SWEEP_RC=$?
sleep 0.2 # let the stderr tee drain

# --- 4. short table last ---------------------------------------------------------------------
STEM=$("$PY" -c 'import sys, torch; sys.path.insert(0, "benchmarks"); from bench_gpu import gpu_stem
print(gpu_stem(torch.cuda.get_device_name()))')
say "done"
{
    echo
    echo "CUDA tests: $([ "$TESTS_RC" = 0 ] && echo passed || echo "FAILED (exit $TESTS_RC)")"
    echo "sweep and add_lora_slices: $([ "$SWEEP_RC" = 0 ] && echo ok || echo "FAILED cases or errors (exit $SWEEP_RC)"); outputs: $OUTDIR/$STEM.{json,png,log}, $OUTDIR/$STEM-slices.png; full log: $LOG"
    if [ -f "$OUTDIR/$STEM.json" ]; then
        "$PY" benchmarks/bench_gpu.py --summary "$OUTDIR/$STEM.json"
    else
        echo "no $OUTDIR/$STEM.json was written"
    fi
} 2>&1 | tee -a "$LOG"
[ "$TESTS_RC" = 0 ] && [ "$SWEEP_RC" = 0 ]
