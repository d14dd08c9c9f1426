#!/usr/bin/env bash
# Fetches a prebuilt llama.cpp (CPU) into models/llama.cpp/ — the independent reader the
# GGUF tests load our exported files with.
#
# Source: the npm packages of node-llama-cpp, version pinned below.
#   @node-llama-cpp/linux-x64   bins/linux-x64/: libllama.v0.5.0.so, libggml*.so (the CPU
#                               backend in one variant per instruction set, picked at load time)
#   node-llama-cpp              llama/gitRelease.bundle: a git bundle of the very llama.cpp
#                               source those binaries were built from; we take its public
#                               headers (include/llama.h, ggml/include/*.h) so that a C++
#                               program can be compiled against exactly that ABI.
#
# Result:
#   models/llama.cpp/lib/       the shared libraries (+ libllama.so / libggml.so symlinks)
#   models/llama.cpp/include/   llama.h, ggml*.h of the same commit
#   models/llama.cpp/VERSION    package version, llama.cpp release and commit
# Skips everything when models/llama.cpp/VERSION already names this version.
# Needs npm, tar and git. Linux x86-64 only.
set -euo pipefail

VERSION="3.22.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${LMTUNE_LLAMA_CPP_DIR:-$ROOT/models/llama.cpp}"

if [[ -f "$DEST/VERSION" ]] && grep -qx "node-llama-cpp $VERSION" "$DEST/VERSION" \
   && [[ -f "$DEST/lib/libllama.so" && -f "$DEST/include/llama.h" ]]; then
  echo "llama.cpp (node-llama-cpp $VERSION) already in $DEST"
  exit 0
fi

for tool in npm tar git; do
  command -v "$tool" >/dev/null || { echo "fetch_llama_cpp.sh: '$tool' is needed" >&2; exit 1; }
done
[[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] || { echo "fetch_llama_cpp.sh: Linux x86-64 only" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "fetching @node-llama-cpp/linux-x64@$VERSION and node-llama-cpp@$VERSION from npm"
(cd "$TMP" && npm pack --silent "@node-llama-cpp/linux-x64@$VERSION" "node-llama-cpp@$VERSION" >/dev/null)
mkdir -p "$TMP/bin" "$TMP/src"
tar xzf "$TMP/node-llama-cpp-linux-x64-$VERSION.tgz" -C "$TMP/bin"
tar xzf "$TMP/node-llama-cpp-$VERSION.tgz" -C "$TMP/src" package/llama/gitRelease.bundle package/llama/llama.cpp.info.json

BINS="$TMP/bin/package/bins/linux-x64"
LIBLLAMA="$(cd "$BINS" && ls libllama*.so | grep -v common | head -n1)"
LIBGGML="$(cd "$BINS" && ls libggml.*so | head -n1)"
[[ -n "$LIBLLAMA" && -n "$LIBGGML" && -f "$BINS/libggml-base.so" ]] \
  || { echo "fetch_llama_cpp.sh: unexpected package layout in $BINS" >&2; ls "$BINS" >&2; exit 1; }

# The headers of the bundled source (no full checkout: a bare clone and git archive).
git clone --quiet --bare "$TMP/src/package/llama/gitRelease.bundle" "$TMP/llama.git"
COMMIT="$(git --git-dir="$TMP/llama.git" rev-parse HEAD)"
mkdir -p "$TMP/headers"
git --git-dir="$TMP/llama.git" archive HEAD include ggml/include LICENSE | tar x -C "$TMP/headers"

STAGE="$DEST.tmp.$$"
rm -rf "$STAGE"
mkdir -p "$STAGE/lib" "$STAGE/include"
cp "$BINS"/*.so "$STAGE/lib/"
cp "$BINS/_nlcBuildMetadata.json" "$STAGE/lib/" 2>/dev/null || true
ln -s "$LIBLLAMA" "$STAGE/lib/libllama.so"
[[ "$LIBGGML" == "libggml.so" ]] || ln -s "$LIBGGML" "$STAGE/lib/libggml.so"
cp "$TMP/headers/include/"*.h "$TMP/headers/ggml/include/"*.h "$STAGE/include/"
cp "$TMP/headers/LICENSE" "$STAGE/LICENSE"
{
  echo "node-llama-cpp $VERSION"
  echo "llama.cpp $(tr -d '\n ' < "$TMP/src/package/llama/llama.cpp.info.json")"
  echo "commit $COMMIT"
} > "$STAGE/VERSION"

rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$STAGE" "$DEST"
echo "llama.cpp (node-llama-cpp $VERSION, commit $COMMIT) in $DEST"
