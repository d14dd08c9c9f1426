#!/usr/bin/env bash
# The main job, from a fresh clone: installs what it needs, builds, fetches stories15M and
# Moby-Dick, measures validation perplexity, fine-tunes with LoRA (configs/demo_lora.yaml),
# measures it again, prints a greedy sample before and after, and exports HF and GGUF.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
start=$(date +%s)
scripts/deps.sh
scripts/fetch_model.sh
scripts/fetch_data.sh
scripts/build.sh --target lmtune
lm=build/lmtune
base=models/stories15M-hf
run=runs/demo-lora
if [[ ! -f $base/config.json ]]; then
  $lm import llama2c models/stories15M/model.bin models/stories15M/tokenizer.bin $base
fi
val=models/moby-dick/validation.txt
cat models/moby-dick/validation/*.txt > "$val.tmp" && mv "$val.tmp" "$val"
prompt="Call me Ishmael."

echo "== before fine-tuning"
before=$($lm perplexity $base --text-file "$val")
echo "validation: $before"
echo -n "sample: "
$lm generate $base --prompt "$prompt" --max-new-tokens 40 --temperature 0

echo "== fine-tuning (LoRA, all linear layers, rank 8)"
$lm train configs/demo_lora.yaml

echo "== export"
$lm export $run --format hf --out $run/export-hf --overwrite
$lm export $run --format gguf --out $run/model-f16.gguf --dtype f16 --overwrite

echo "== after fine-tuning"
after=$($lm perplexity $run/export-hf --text-file "$val")
echo "validation: $after"
echo -n "sample: "
$lm generate $run/export-hf --prompt "$prompt" --max-new-tokens 40 --temperature 0

ppl() { sed -n 's/.*ppl=\([0-9.]*\).*/\1/p' <<<"$1"; }
awk -v a="$(ppl "$before")" -v b="$(ppl "$after")" -v t=$(( $(date +%s) - start )) 'BEGIN {
  printf "validation perplexity %.2f -> %.2f (%.1f%% lower); demo took %d s\n", a, b, 100 * (a - b) / a, t }'
echo "outputs: $run/export-hf (HF), $run/model-f16.gguf (GGUF), $run/metrics.jsonl"
