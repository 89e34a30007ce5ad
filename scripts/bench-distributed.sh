#!/usr/bin/env bash
# Data-parallel measurements on one machine (docs/distributed.md): 1 process x 2 threads against
# 2 processes x 1 thread (int8 and fp32 gradient exchange) for the 4-bit ResNet-20 and the 6-bit
# char-GPT: step time and bytes per step; then, with MODE=accuracy, 3-epoch ResNet-20 runs.
# Writes JSON-lines logs to $RESULTS_DIR and a Markdown table on stdout.
#
#   scripts/bench-distributed.sh                 # step times (a few minutes)
#   MODE=accuracy scripts/bench-distributed.sh   # + 3-epoch 4-bit ResNet-20, 1 vs 2 processes (~30 min)
#
# Settings: BUILD_DIR=build RESULTS_DIR=bench/results/distributed MODE=steps|accuracy SEED=1
#           RESNET_STEPS_IMAGES=6400 GPT_STEPS=30 KJV=kjv.txt EXCHANGES="int8 fp32"
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
RESULTS_DIR=${RESULTS_DIR:-bench/results/distributed}
MODE=${MODE:-steps}
SEED=${SEED:-1}
RESNET_STEPS_IMAGES=${RESNET_STEPS_IMAGES:-6400}
GPT_STEPS=${GPT_STEPS:-30}
KJV=${KJV:-kjv.txt}
EXCHANGES=${EXCHANGES:-int8 fp32}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
mkdir -p "$RESULTS_DIR"
resnet=$BUILD_DIR/examples/shiftq-train-resnet
gpt=$BUILD_DIR/examples/shiftq-train-gpt
[[ -x $resnet && -x $gpt ]] || { echo "build first: cmake --build $BUILD_DIR" >&2; exit 1; }
[[ -f $KJV ]] || scripts/prepare-kjv.sh "$KJV" >&2

# run NAME PROCS THREADS EXCHANGE BINARY ARGS...: one run, its metrics in $RESULTS_DIR/NAME.jsonl
run() {
  local name=$1 procs=$2 threads=$3 exchange=$4 bin=$5
  shift 5
  rm -f "$RESULTS_DIR/$name.jsonl"
  echo "== $name: $procs process(es) x $threads thread(s), exchange $exchange" >&2
  if [[ $procs == 1 ]]; then
    "$bin" --threads "$threads" --no-verbose --log "$RESULTS_DIR/$name.jsonl" "$@" >&2
  else
    mpirun -np "$procs" --oversubscribe --bind-to none "$bin" --distributed --grad-exchange "$exchange" \
      --threads "$threads" --no-verbose --log "$RESULTS_DIR/$name.jsonl" "$@" >&2
  fi
}

# The paper's recipe (the documented figures ran with it; the trainer's default is the best configuration).
resnet_args=(--bits 4 --norm l1 --act-quant per-tensor --act-clip none --weight-clip none --seed "$SEED")
gpt_args=(--data "$KJV" --bits 6 --norm l1 --seed "$SEED" --steps "$GPT_STEPS" --eval-every "$GPT_STEPS" --eval-batches 2)
steps_args=(--epochs 1 --train-subset "$RESNET_STEPS_IMAGES" --test-subset 500)
run resnet-int4-1x2 1 2 - "$resnet" "${resnet_args[@]}" "${steps_args[@]}"
run gpt-int6-1x2 1 2 - "$gpt" "${gpt_args[@]}"
for ex in $EXCHANGES; do
  run "resnet-int4-2x1-$ex" 2 1 "$ex" "$resnet" "${resnet_args[@]}" "${steps_args[@]}"
  run "gpt-int6-2x1-$ex" 2 1 "$ex" "$gpt" "${gpt_args[@]}"
done
if [[ $MODE == accuracy ]]; then
  run acc-resnet-int4-1x2 1 2 - "$resnet" "${resnet_args[@]}" --epochs 3
  for ex in $EXCHANGES; do
    run "acc-resnet-int4-2x1-$ex" 2 1 "$ex" "$resnet" "${resnet_args[@]}" --epochs 3
  done
fi

python3 - "$RESULTS_DIR" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
def last(name):
    p = d / f"{name}.jsonl"
    return json.loads(p.read_text().splitlines()[-1]) if p.exists() else None
print("| model | run | step (ms) | vs 1 x 2 threads | exchange bytes / step / rank |")
print("| --- | --- | ---: | ---: | ---: |")
for model, batch, key in (("resnet-int4", 128, "images_per_second"), ("gpt-int6", 32 * 128, "tokens_per_second")):
    base = last(f"{model}-1x2")
    for run in ("1x2", "2x1-int8", "2x1-fp32"):
        m = last(f"{model}-{run}")
        if not m: continue
        ms = 1000 * batch / m[key]
        ratio = (1000 * batch / base[key]) / ms if base else float("nan")
        b = m.get("exchange_bytes_per_step")
        print(f"| {model} | {run} | {ms:.0f} | {ratio:.2f}x | {b:,.0f} |" if b else f"| {model} | {run} | {ms:.0f} | {ratio:.2f}x | - |")
rows = [(r, last(f"acc-resnet-int4-{r}")) for r in ("1x2", "2x1-int8", "2x1-fp32")]
if any(m for _, m in rows):
    print("\n| 3-epoch ResNet-20 4-bit | test accuracy | train loss |\n| --- | ---: | ---: |")
    for r, m in rows:
        if m: print(f"| {r} | {100 * m['test_accuracy']:.2f}% | {m['train_loss']:.4f} |")
PY
