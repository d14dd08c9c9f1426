#!/usr/bin/env bash
# Tokenizer encoding speed, lmtune next to @huggingface/tokenizers (JavaScript, under node),
# measured in the same run on the same text: Moby-Dick (all chapters of models/moby-dick,
# ~1.1 MB), special tokens parsed, no BOS, best of REPEATS runs, one thread each. Then the
# bound on one word's cost: MEGABYTES of letters with no space (one 50 MB "word" by default)
# through the SentencePiece (stories15M) and byte-level (Llama 3) tokenizers: time and the
# peak memory the encode added per input byte.
#   bench/tokenize.sh [REPEATS=3] [MEGABYTES=50]
# Needs scripts/fetch_model.sh, fetch_data.sh and fetch_tokenizers.sh to have run, and node.
# Environment: LMTUNE_BUILD_DIR (default build).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPEATS=${1:-3}
MEGABYTES=${2:-50}
BUILD=${LMTUNE_BUILD_DIR:-$ROOT/build}
TOK=$ROOT/models/tokenizers
for need in "$TOK/.complete" "$ROOT/models/moby-dick/.complete" "$ROOT/models/stories15M/tokenizer.bin"; do
  [ -e "$need" ] || { echo "error: $need is missing (scripts/fetch_*.sh)" >&2; exit 1; }
done
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD" --target tokenize_bench >/dev/null

TEXT=$(mktemp)
trap 'rm -f "$TEXT"' EXIT
cat "$ROOT"/models/moby-dick/train/*.txt "$ROOT"/models/moby-dick/validation/*.txt > "$TEXT"

load() { cut -d" " -f1-3 /proc/loadavg; }
mbps() { sed -n 's/.*"mb_per_s": *\([0-9.]*\).*/\1/p'; }
CPU=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
echo "machine: ${CPU:-unknown CPU}, nproc $(nproc); text: Moby-Dick, $(wc -c < "$TEXT") bytes"
for name in llama3 qwen3; do
  echo "== $name: lmtune (load: $(load))"
  OURS=$("$BUILD/bench/tokenize_bench" encode "$TOK/$name" "$TEXT" "$REPEATS")
  echo "$OURS"
  echo "== $name: @huggingface/tokenizers 0.2.0, node $(node --version) (load: $(load))"
  JS=$(node "$ROOT/tests/reference/hf_tokenizers_encode.mjs" "$TOK/hf-tokenizers-js" "$TOK/$name" --bench "$TEXT" "$REPEATS")
  echo "$JS"
  awk -v a="$(echo "$OURS" | mbps)" -v b="$(echo "$JS" | mbps)" -v n="$name" \
    'BEGIN { printf "%s: lmtune %.2f MB/s, @huggingface/tokenizers %.2f MB/s, ratio %.1fx\n", n, a, b, a / b }'
done
echo "== SentencePiece (stories15M) on Moby-Dick (load: $(load))"
"$BUILD/bench/tokenize_bench" encode "$ROOT/models/stories15M/tokenizer.bin" "$TEXT" "$REPEATS"
echo "== $MEGABYTES MB without a space: SentencePiece (stories15M), then byte-level (Llama 3) (load: $(load))"
"$BUILD/bench/tokenize_bench" nospace "$ROOT/models/stories15M/tokenizer.bin" "$MEGABYTES"
"$BUILD/bench/tokenize_bench" nospace "$TOK/llama3" "$MEGABYTES"
echo "load after: $(load)"
