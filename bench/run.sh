#!/usr/bin/env bash
# lmtune against PyTorch, measured in the same run on the same machine, 2 threads each
# (PyTorch 1.13 from Debian, the reference model of tests/reference/):
#   bench/run.sh fwdbwd [STEPS=5]  stories15M, B = 8, T = 256: forward + loss + backward
#   bench/run.sh lora   [STEPS=5]  the same with frozen f32 base weights and rank-8 adapters
#                                  on all seven linear layers; one step = forward + loss +
#                                  backward + clip + AdamW
# The load average is printed before each side runs: on a shared machine the numbers mean
# little when it is above the thread count.
# Environment: LMTUNE_BUILD_DIR (default build), LMTUNE_BENCH_THREADS (default 2),
#              LMTUNE_PYTHON (default /usr/bin/python3, which has torch).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHICH=${1:-}
case "$WHICH" in
  fwdbwd) PEER=torch_fwdbwd.py ;;
  lora) PEER=torch_lora.py ;;
  *) echo "usage: bench/run.sh fwdbwd|lora [STEPS=5]" >&2; exit 2 ;;
esac
STEPS=${2:-5}
BUILD=${LMTUNE_BUILD_DIR:-$ROOT/build}
THREADS=${LMTUNE_BENCH_THREADS:-2}
PYTHON=${LMTUNE_PYTHON:-/usr/bin/python3}
SRC=$ROOT/models/stories15M
HF=$ROOT/models/stories15M-hf

if [ ! -f "$SRC/model.bin" ] || [ ! -f "$SRC/tokenizer.bin" ]; then
  echo "error: $SRC/model.bin and tokenizer.bin are needed (scripts/fetch_model.sh)" >&2
  exit 1
fi
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD" --target step_bench lmtune
if [ ! -f "$HF/config.json" ]; then
  "$BUILD/lmtune" import llama2c "$SRC/model.bin" "$SRC/tokenizer.bin" "$HF"
fi

load() { cut -d" " -f1-3 /proc/loadavg; }
echo "== lmtune (load: $(load))"
LMTUNE_OUT=$("$BUILD/bench/step_bench" "$WHICH" "$HF" "$STEPS" "$THREADS")
echo "$LMTUNE_OUT"
echo "== torch (load: $(load))"
TORCH_OUT=$(OMP_NUM_THREADS=$THREADS "$PYTHON" "$ROOT/bench/$PEER" "$HF" "$STEPS" "$THREADS")
echo "$TORCH_OUT"

LMTUNE_TPS=$(echo "$LMTUNE_OUT" | sed -n 's/^lmtune[a-z_]*_tokens_per_s=//p')
TORCH_TPS=$(echo "$TORCH_OUT" | sed -n 's/^torch[a-z_]*_tokens_per_s=//p')
CPU=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
echo "== summary ($WHICH)"
echo "machine: ${CPU:-unknown CPU}, nproc $(nproc), threads $THREADS, load after: $(load)"
echo "lmtune_tokens_per_s=$LMTUNE_TPS"
echo "torch_tokens_per_s=$TORCH_TPS"
awk -v a="$LMTUNE_TPS" -v b="$TORCH_TPS" 'BEGIN { printf "ratio_lmtune_over_torch=%.3f\n", a / b }'
