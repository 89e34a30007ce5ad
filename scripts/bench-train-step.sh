#!/usr/bin/env bash
# Training-step benchmark, end to end: shiftq (bench_train_step, each case in its own process so
# that its peak RSS is its own, --benchmark_repetitions) and the PyTorch fp32 baseline
# (bench/pytorch/train_step.py, each case in its own process), then the Markdown report on stdout.
# Progress goes to stderr.
#
# Writes  $RESULTS_DIR/train_step.json          (bench_train_step, merged over the processes)
#         $RESULTS_DIR/train_step_pytorch.json  (PyTorch)
#
# Settings (environment):
#   BUILD_DIR=build        CMake build directory (configured as Release if it does not exist)
#   SKIP_BUILD=0           1: use the existing $BUILD_DIR/bench/bench_train_step as is
#   RESULTS_DIR=bench/results
#   REPETITIONS=5          --benchmark_repetitions (the report uses the median)
#   MIN_TIME=2             --benchmark_min_time in seconds per repetition (a step takes 0.2-2 s)
#   FILTER=.               regex: only the bench_train_step cases matching it
#   THREADS=1,2            thread counts of the PyTorch runs
#   PT_STEPS=20 PT_WARMUP=3  PyTorch timed steps (median) and warmup steps per case
#   PYTHON=/usr/bin/python3  interpreter with Debian's python3-torch (not a pyenv python)
#   SKIP_PYTORCH=0         1: shiftq only (also skipped, with a warning, when torch cannot be imported)
#   NICE=                  e.g. "nice -n 19" to prefix every run
#   ROUNDS=1               repeat the whole set (every shiftq case, then every PyTorch case) this many
#                          times; the report takes medians over rounds and per-round ratios, so
#                          shiftq and PyTorch are compared minutes apart rather than across the run
# PyTorch (optional, never a build dependency): apt-get install -y python3-torch libopenblas0-openmp
# (without libopenblas0-openmp Debian's torch runs its matmuls on the reference BLAS, ~2 GFLOPS).
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS_DIR=${RESULTS_DIR:-bench/results}
REPETITIONS=${REPETITIONS:-5}
MIN_TIME=${MIN_TIME:-2}
FILTER=${FILTER:-.}
THREADS=${THREADS:-1,2}
PT_STEPS=${PT_STEPS:-20}
PT_WARMUP=${PT_WARMUP:-3}
PYTHON=${PYTHON:-/usr/bin/python3}
SKIP_PYTORCH=${SKIP_PYTORCH:-0}
NICE=${NICE:-}
ROUNDS=${ROUNDS:-1}

log() { echo "bench-train-step: $*" >&2; }

BIN="$BUILD_DIR/bench/bench_train_step"
if [[ "$SKIP_BUILD" != 1 ]]; then
  if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
    log "configuring $BUILD_DIR (Release)"
    cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >&2
  fi
  log "building bench_train_step in $BUILD_DIR"
  cmake --build "$BUILD_DIR" --target bench_train_step >&2
fi
[[ -x "$BIN" ]] || { log "no $BIN (build it, or set BUILD_DIR)"; exit 1; }

mkdir -p "$RESULTS_DIR"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# 1. shiftq: every case in its own process (peak RSS = getrusage ru_maxrss, a process high-water mark).
# 2. PyTorch fp32 baseline (each case in its own process; ResNet-20 in both memory formats).
# Both, ROUNDS times.
mapfile -t CASES < <("$BIN" --benchmark_list_tests | grep -E -- "$FILTER")
[[ ${#CASES[@]} -gt 0 ]] || { log "no case matches FILTER=$FILTER"; exit 1; }
RUN_PYTORCH=1
if [[ "$SKIP_PYTORCH" == 1 ]]; then
  log "SKIP_PYTORCH=1: no PyTorch baseline"
  RUN_PYTORCH=0
elif ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  log "WARNING: $PYTHON cannot import torch (apt-get install -y python3-torch libopenblas0-openmp); no PyTorch baseline"
  RUN_PYTORCH=0
fi
parts=()
pt_parts=()
for round in $(seq 1 "$ROUNDS"); do
  i=0
  for name in "${CASES[@]}"; do
    i=$((i + 1))
    out="$TMP/r${round}_case_$i.json"
    log "round $round/$ROUNDS [$i/${#CASES[@]}] $name"
    $NICE "$BIN" --benchmark_filter="^${name}\$" --benchmark_repetitions="$REPETITIONS" \
      --benchmark_report_aggregates_only=true --benchmark_min_time="$MIN_TIME" \
      --benchmark_out="$out" --benchmark_out_format=json >&2
    parts+=("$out")
  done
  if [[ "$RUN_PYTORCH" == 1 ]]; then
    log "round $round/$ROUNDS: PyTorch"
    $NICE "$PYTHON" bench/pytorch/train_step.py --all --threads-list "$THREADS" --steps "$PT_STEPS" \
      --warmup "$PT_WARMUP" --out "$TMP/pt_r${round}.json" >&2
    pt_parts+=("$TMP/pt_r${round}.json")
  fi
done
"$PYTHON" bench/report_train_step.py merge "$RESULTS_DIR/train_step.json" "${parts[@]}"
log "wrote $RESULTS_DIR/train_step.json"
PT_JSON=""
if [[ "$RUN_PYTORCH" == 1 ]]; then
  PT_JSON="$RESULTS_DIR/train_step_pytorch.json"
  "$PYTHON" bench/report_train_step.py merge-pytorch "$PT_JSON" "${pt_parts[@]}"
  log "wrote $PT_JSON"
fi

# 3. The report.
MADE_BY="ROUNDS=$ROUNDS REPETITIONS=$REPETITIONS MIN_TIME=$MIN_TIME THREADS=$THREADS PT_STEPS=$PT_STEPS PT_WARMUP=$PT_WARMUP"
[[ "$FILTER" == . ]] || MADE_BY+=" FILTER='$FILTER'"
"$PYTHON" bench/report_train_step.py --shiftq "$RESULTS_DIR/train_step.json" --pytorch "$PT_JSON" \
  --made-by "$MADE_BY scripts/bench-train-step.sh"
