#!/usr/bin/env bash
# The main job: installs what it needs, builds, fetches stories15M, imports it into an HF
# model directory, and prints its greedy continuation of "Once upon a time".
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/deps.sh
scripts/fetch_model.sh
scripts/build.sh --target lmtune
if [[ ! -f models/stories15M-hf/model.safetensors ]]; then
  build/lmtune import llama2c models/stories15M/model.bin models/stories15M/tokenizer.bin models/stories15M-hf
fi
build/lmtune generate models/stories15M-hf --prompt "Once upon a time" --max-new-tokens 40 --temperature 0 --memory-report
