#!/usr/bin/env bash
# Reproduces the Transformer rows of docs/results.md: the char-GPT (4 layers, d 256, 4 heads,
# context 128, batch 32) on the King James Bible, same steps and seed: fp32 + LayerNorm vs 6-bit
# ShiftQuant + fully quantized L1LayerNorm, and ablations (per-tensor gradients; 4-bit with the
# paper's recipe, with rotated Linear inputs and MSE-clipped per-token scales, and the best 4-bit
# configuration: the same with block multipliers per 16 features and MSE-chosen weight exponents).
# Usage: scripts/run-gpt-results.sh [BUILD_DIR] [STEPS] [THREADS] [WHICH]   (logs in docs/results/)
set -euo pipefail
build=${1:-build}
steps=${2:-1000}
threads=${3:-2}
which=${4:-all}   # main | ablations | all
bin="$build/examples/shiftq-train-gpt"
out=docs/results
mkdir -p "$out"
[[ -f kjv.txt ]] || scripts/prepare-kjv.sh kjv.txt
run() {
  local name=$1; shift
  rm -f "$out/gpt-$name.jsonl"
  echo "== $name: $bin --data kjv.txt --steps $steps --threads $threads $*"
  "$bin" --data kjv.txt --steps "$steps" --threads "$threads" --seed 1 --eval-every 200 --eval-batches 32 \
    --log "$out/gpt-$name.jsonl" --checkpoint "$out/gpt-$name.safetensors" --no-verbose "$@"
  "$bin" --sample 300 --load "$out/gpt-$name.safetensors" --prompt "And God said" > "$out/gpt-$name.sample.txt"
  rm -f "$out/gpt-$name.safetensors"
}
if [[ $which == main || $which == all ]]; then
  run fp32-l2 --norm l2
  run w6a6g6-l1 --bits 6 --norm l1
fi
if [[ $which == ablations || $which == all ]]; then
  run w6a6g6-pertensor-l1 --bits 6 --norm l1 --grad-quant per-tensor
  run w4a4g4-l1 --bits 4 --norm l1
  run w4a4g4-l1-rot-pertoken-mse --bits 4 --norm l1 --act-rotation hadamard --act-quant per-token --act-clip mse
  run w4a4g4-l1-rot-pertokenblocks-mse-wmse --bits 4 --norm l1 --act-rotation hadamard --act-quant per-token-blocks \
    --act-clip mse --weight-clip mse
fi
