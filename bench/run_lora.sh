#!/usr/bin/env bash
# LoRA training throughput, lmtune against PyTorch, measured in the same run on the same
# machine: stories15M with frozen f32 base weights and rank-8 adapters on all seven linear
# layers, B = 8, T = 256; one step = forward + loss + backward + clip + AdamW; 2 threads each.
# The load average is printed before each side runs: on a shared machine the numbers mean
# little when it is above the thread count.
#
# Usage: bench/run_lora.sh [STEPS=5]
# Environment: LMTUNE_BUILD_DIR (default build), LMTUNE_BENCH_THREADS (default 2),
#              LMTUNE_PYTHON (default /usr/bin/python3, which has torch).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${LMTUNE_BUILD_DIR:-$ROOT/build}
STEPS=${1:-5}
THREADS=${LMTUNE_BENCH_THREADS:-2}
PYTHON=${LMTUNE_PYTHON:-/usr/bin/python3}
SRC=$ROOT/models/stories15M
HF=$ROOT/models/stories15M-hf

if [ ! -f "$SRC/model.bin" ] || [ ! -f "$SRC/tokenizer.bin" ]; then
  echo "error: $SRC/model.bin and tokenizer.bin are needed (scripts/fetch_model.sh)" >&2
  exit 1
fi

# Build (incremental: a no-op when up to date).
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD" --target lora_bench lmtune

if [ ! -f "$HF/config.json" ]; then
  "$BUILD/lmtune" import llama2c "$SRC/model.bin" "$SRC/tokenizer.bin" "$HF"
fi

echo "== lmtune (load: $(cut -d" " -f1-3 /proc/loadavg))"
LMTUNE_OUT=$("$BUILD/bench/lora_bench" "$HF" "$STEPS" "$THREADS")
echo "$LMTUNE_OUT"
echo "== torch (load: $(cut -d" " -f1-3 /proc/loadavg))"
TORCH_OUT=$(OMP_NUM_THREADS=$THREADS "$PYTHON" "$ROOT/bench/torch_lora.py" "$HF" "$STEPS" "$THREADS")
echo "$TORCH_OUT"

LMTUNE_TPS=$(echo "$LMTUNE_OUT" | sed -n 's/^lmtune_lora_tokens_per_s=//p')
TORCH_TPS=$(echo "$TORCH_OUT" | sed -n 's/^torch_lora_tokens_per_s=//p')
CPU=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)

echo "== summary"
echo "machine: ${CPU:-unknown CPU}, nproc $(nproc), threads $THREADS, load after: $(cut -d" " -f1-3 /proc/loadavg)"
echo "lmtune_lora_tokens_per_s=$LMTUNE_TPS"
echo "torch_lora_tokens_per_s=$TORCH_TPS"
awk -v a="$LMTUNE_TPS" -v b="$TORCH_TPS" 'BEGIN { printf "ratio_lmtune_over_torch=%.3f\n", a / b }'
