#!/usr/bin/env bash
# QAT against post-training quantization (PTQ) to GGUF Q4_0, on the Moby-Dick demo:
#   lora  configs/demo_lora.yaml (LoRA on stories15M), exported to GGUF F32 and Q4_0 (PTQ)
#   qat   configs/demo_qat.yaml (the same LoRA with method.qat: q4_0), exported to F32 and Q4_0
# Validation perplexity of each file computed by llama.cpp itself (its library, through
# tests/reference/gguf_llama_cpp_run.cpp's perplexity mode: BOS, windows of 256 tokens, each
# predicting its own next tokens) on models/moby-dick/validation.txt. The number that
# counts: the share of the perplexity PTQ loses that QAT recovers,
#   recovered = (ppl(lora Q4_0) - ppl(qat Q4_0)) / (ppl(lora Q4_0) - ppl(lora F32))
# (torchao's measure; it reports ~68% on wikitext for Llama-3-8B).
#   bench/qat_vs_ptq.sh [STEPS]      (default: the demo's own 150 steps)
# Needs scripts/fetch_model.sh, fetch_data.sh and fetch_llama_cpp.sh to have run.
# Environment: LMTUNE_BUILD_DIR (default build), LMTUNE_BENCH_KEEP=DIR keeps the runs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${LMTUNE_BUILD_DIR:-$ROOT/build}
STEPS=${1:-}
LLAMA=$ROOT/models/llama.cpp
for need in "$ROOT/models/stories15M-hf/config.json" "$ROOT/models/moby-dick/.complete" "$LLAMA/lib/libllama.so"; do
  [ -e "$need" ] || { echo "error: $need is missing (scripts/fetch_*.sh)" >&2; exit 1; }
done
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD" --target lmtune >/dev/null
LMTUNE=$BUILD/lmtune

WORK=${LMTUNE_BENCH_KEEP:-$(mktemp -d)}
mkdir -p "$WORK"
[ -n "${LMTUNE_BENCH_KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
LIB=$(cd "$LLAMA/lib" && pwd)
c++ -std=c++17 -O2 -I"$LLAMA/include" "$ROOT/tests/reference/gguf_llama_cpp_run.cpp" -o "$WORK/runner" \
  -L"$LIB" -l:libllama.so -l:libggml.so -lggml-base -Wl,-rpath,"$LIB"

load() { cut -d" " -f1-3 /proc/loadavg; }
CPU=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
echo "machine: ${CPU:-unknown CPU}, nproc $(nproc); llama.cpp $(sed -n 's/.*"tag":"\([^"]*\)".*/\1/p' "$LLAMA/VERSION")"

cd "$ROOT"
OVERRIDES=(train.eval_every=0 train.sample_tokens=0 train.save_every=0 output.overwrite=true)
[ -z "$STEPS" ] || OVERRIDES+=(train.max_steps="$STEPS")
declare -A PPL
for run in lora qat; do
  echo "== train configs/demo_$run.yaml ${STEPS:+($STEPS steps) }(load: $(load))"
  start=$(date +%s)
  "$LMTUNE" train "configs/demo_$run.yaml" "${OVERRIDES[@]}" output.dir="$WORK/$run" --quiet
  echo "   $(($(date +%s) - start)) s"
  for type in f32 q4_0; do
    "$LMTUNE" export "$WORK/$run" --format gguf --dtype "$type" --out "$WORK/$run-$type.gguf" --overwrite >/dev/null
    line=$("$WORK/runner" perplexity "$WORK/$run-$type.gguf" "$LIB" models/moby-dick/validation.txt 256 "$(nproc)")
    PPL[$run-$type]=$(echo "$line" | sed -n 's/.*ppl=\([0-9.]*\).*/\1/p')
    echo "   $run $type: $line ($(du -k "$WORK/$run-$type.gguf" | cut -f1) KiB)"
  done
done
echo
echo "| run | GGUF F32 | GGUF Q4_0 | lost to Q4_0 |"
echo "|---|---|---|---|"
for run in lora qat; do
  awk -v r="$run" -v a="${PPL[$run-f32]}" -v b="${PPL[$run-q4_0]}" \
    'BEGIN { printf "| %s | %.3f | %.3f | %+.3f |\n", r, a, b, b - a }'
done
awk -v f="${PPL[lora-f32]}" -v p="${PPL[lora-q4_0]}" -v q="${PPL[qat-q4_0]}" \
  'BEGIN { printf "\nQAT recovers %.1f%% of the perplexity PTQ loses ((%.3f - %.3f) / (%.3f - %.3f))\n", 100 * (p - q) / (p - f), p, q, p, f }'
echo "load after: $(load)"
