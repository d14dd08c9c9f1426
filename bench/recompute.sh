#!/usr/bin/env bash
# Activation recompute on this machine, measured:
#   bench/recompute.sh [B=4] [ROUNDS=8]
# stories15M, T=256, micro-batch B, LoRA (the demo's rank-8 all-linear adapters) and full
# fine-tuning, parallel.recompute none / selective / full:
#   * memory: a 2-step `lmtune train` run per policy — its activation peak and total
#     allocated peak from memory.json, and whether the meta prediction equals the measured
#     peaks and every category to the byte;
#   * time: bench/recompute_bench (one process, the three policies taking turns step by
#     step for ROUNDS rounds): the median CPU and wall time of an optimizer step and the
#     median ratio to none's step of the same round — the cost of the rebuilds.
# The load average is printed with each part: on a shared machine wall times follow the
# load; the CPU time of a single-threaded run much less.
# Environment: LMTUNE_BUILD_DIR (default build), LMTUNE_BENCH_THREADS (default 1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=${1:-4}
ROUNDS=${2:-8}
BUILD=${LMTUNE_BUILD_DIR:-$ROOT/build}
THREADS=${LMTUNE_BENCH_THREADS:-1}
PYTHON=/usr/bin/python3
HF=$ROOT/models/stories15M-hf
SRC=$ROOT/models/stories15M
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

cmake --build "$BUILD" --target lmtune recompute_bench >/dev/null
if [ ! -f "$HF/config.json" ]; then
  "$BUILD/lmtune" import llama2c "$SRC/model.bin" "$SRC/tokenizer.bin" "$HF" >/dev/null
fi
load() { cut -d" " -f1-3 /proc/loadavg; }

echo "# $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1), nproc $(nproc), $THREADS thread(s);" \
     "stories15M, T=256, B=$B"
for method in lora full; do
  echo "## $method: memory of 2-step lmtune train runs (memory.json, MiB; load $(load))"
  for recompute in none selective full; do
    run="$OUT/$method-$recompute"
    extra=()
    [ "$method" = full ] && extra=(method.type=full)
    (cd "$ROOT" && "$BUILD/lmtune" train configs/demo_lora.yaml model.path="$HF" output.dir="$run" \
       train.max_steps=2 train.micro_batch_size="$B" train.eval_every=0 train.eval_batches=1 \
       train.sample_tokens=0 train.save_every=0 train.threads="$THREADS" parallel.recompute="$recompute" \
       "${extra[@]}" --quiet) >"$run.log" 2>&1 || { cat "$run.log" >&2; exit 1; }
    "$PYTHON" - "$run" "$recompute" <<'EOF'
import json, sys
run, recompute = sys.argv[1:3]
m = json.load(open(run + "/memory.json"))[0]
exact = (m["peak_allocated"] == m["predicted_peak_allocated"] and m["peak_reserved"] == m["predicted_peak_reserved"]
         and m["by_category"] == m["predicted_by_category"])
mib = lambda b: b / 2**20
print(f"  {recompute:9s} activations {mib(m['by_category']['activations']):7.2f}  allocated "
      f"{mib(m['peak_allocated']):7.2f}  reserved {mib(m['peak_reserved']):7.2f}  peak phase '{m['peak_phase']}'  "
      f"meta prediction {'exact' if exact else 'DIFFERS'}")
EOF
  done
  echo "## $method: step time (load $(load))"
  "$BUILD/bench/recompute_bench" "$method" "$HF" "$B" "$ROUNDS" "$THREADS"
done
