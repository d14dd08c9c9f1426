#!/usr/bin/env bash
# Data parallelism on this machine, measured (`lmtune launch`, real mpirun processes):
#   bench/dp.sh memory   [STEPS=3]  stories15M, LoRA and full fine-tuning at dp 1, 2, 4 with
#                                   the same global batch (8 rows of 256 tokens): every
#                                   rank's measured peaks (memory.json) next to the meta
#                                   prediction, by category, and the gradient bytes each
#                                   rank hands to the all-reduce per step next to the formula
#   bench/dp.sh overlap  [STEPS=6]  full fine-tuning at dp 2: mean step time with the
#                                   bucketed all-reduce overlapped with backward and without
#                                   (parallel.overlap_grad_reduce), alternating, twice each
# The load average is printed with each run: on a shared machine, times mean little when it
# is above the core count. Environment: LMTUNE_BUILD_DIR (default build).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHICH=${1:-}
BUILD=${LMTUNE_BUILD_DIR:-$ROOT/build}
PYTHON=/usr/bin/python3
HF=$ROOT/models/stories15M-hf
SRC=$ROOT/models/stories15M
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

case "$WHICH" in
  memory) STEPS=${2:-3} ;;
  overlap) STEPS=${2:-6} ;;
  *) echo "usage: bench/dp.sh memory|overlap [STEPS]" >&2; exit 2 ;;
esac
cmake --build "$BUILD" --target lmtune >/dev/null
if [ ! -f "$HF/config.json" ]; then
  "$BUILD/lmtune" import llama2c "$SRC/model.bin" "$SRC/tokenizer.bin" "$HF" >/dev/null
fi
load() { cut -d" " -f1-3 /proc/loadavg; }

# train NAME DP OVERRIDES...: the demo config on DP ranks, global batch 8 x 256 tokens
train() {
  local name=$1 dp=$2
  shift 2
  (cd "$ROOT" && "$BUILD/lmtune" launch --nproc-per-node "$dp" -- train configs/demo_lora.yaml \
     model.path="$HF" output.dir="$OUT/$name" train.max_steps="$STEPS" train.micro_batch_size=$((8 / dp)) \
     train.eval_every=0 train.eval_batches=1 train.sample_tokens=0 train.save_every=0 "$@") \
     >"$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log" >&2; exit 1; }
}

if [ "$WHICH" = memory ]; then
  echo "# $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1), nproc $(nproc); stories15M, T=256, global batch 8, $STEPS steps"
  for method in lora full; do
    for dp in 1 2 4; do
      extra=()
      [ "$method" = full ] && extra=(method.type=full)
      echo "# $method dp=$dp (load $(load))"
      train "$method-dp$dp" "$dp" "${extra[@]}"
      "$PYTHON" - "$OUT/$method-dp$dp" "$dp" <<'EOF'
import json, sys
run, dp = sys.argv[1], int(sys.argv[2])
mem = json.load(open(run + "/memory.json"))
steps = [json.loads(l) for l in open(run + "/metrics.jsonl") if '"loss"' in l]
mib = lambda b: b / 2**20
cats = ["weights", "trainable", "grads", "optimizer", "activations", "workspace"]
print("  rank  allocated  predicted   reserved  predicted   peak RSS   " + "  ".join(f"{c[:6]:>6}" for c in cats) + "   (MiB)")
for m in mem:
    exact = m["peak_allocated"] == m["predicted_peak_allocated"] and m["peak_reserved"] == m["predicted_peak_reserved"]
    print(f"  {m['rank']:4d} {mib(m['peak_allocated']):10.2f} {mib(m['predicted_peak_allocated']):10.2f} "
          f"{mib(m['peak_reserved']):10.2f} {mib(m['predicted_peak_reserved']):10.2f} {mib(m['peak_rss']):10.2f}   "
          + "  ".join(f"{mib(m['by_category'][c]):6.1f}" for c in cats) + ("   exact" if exact else "   DIFFERS"))
if dp > 1:
    import re
    n = int(re.search(r"training (\d+) parameters", open(run + ".log").read()).group(1))
    reduced = steps[-1]["reduced_bytes"]
    print(f"  all-reduce per step per rank: {reduced} B handed to MPI_Iallreduce; formula 4 B x {n} trainable "
          f"parameters = {4 * n} B ({'equal' if reduced == 4 * n else 'DIFFERS'}); a ring all-reduce sends (and "
          f"receives) 2(p-1)/p of it: {2 * (dp - 1) / dp * reduced / 2**20:.2f} MiB per rank")
EOF
    done
  done
fi

if [ "$WHICH" = overlap ]; then
  echo "# full fine-tuning of stories15M, dp=2, T=256, global batch 8, $STEPS steps; mean step time of steps 2..$STEPS"
  for round in 1 2; do
    for overlap in true false; do
      train "overlap-$overlap-$round" 2 method.type=full parallel.overlap_grad_reduce=$overlap
      "$PYTHON" - "$OUT/overlap-$overlap-$round" "$overlap" "$(load)" <<'EOF'
import json, sys
run, overlap, load = sys.argv[1:4]
steps = [json.loads(l) for l in open(run + "/metrics.jsonl") if '"loss"' in l]
t = [s["step_seconds"] for s in steps[1:]]
print(f"  overlap_grad_reduce={overlap:5s}  {sum(t) / len(t) * 1000:8.1f} ms/step  "
      f"({steps[-1]['reduced_bytes'] / 2**20:.1f} MiB reduced per step; load {load})")
EOF
    done
  done
fi
