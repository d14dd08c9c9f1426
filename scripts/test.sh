#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs dependencies, fetches stories15M,
# builds, runs every test (CTest). GPU tests skip themselves where no GPU is present.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/deps.sh
scripts/fetch_model.sh
scripts/build.sh
cd build
ctest --output-on-failure -j "$(nproc)" --timeout 900
