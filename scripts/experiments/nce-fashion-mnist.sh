#!/usr/bin/env bash
# The issue-4 experiment: uniform W2A2 ResNet-20 vs NCE (expansion at threshold T) vs the same
# search with expansion off (T = inf, i.e. TAS with 2-bit quantization in the loop), all under
# hw-profiles/npu-int2-array.toml (MACs, params and roofline latency <= 1.0x the base), and the
# same final W2A2 training for every row. Resumable: rerun it and finished steps are skipped,
# interrupted ones resume from their checkpoints. Results: docs/results.md.
#
#   STEP=search   scripts/experiments/nce-fashion-mnist.sh   # the searches only
#   STEP=final    SEEDS="0 1 2" scripts/experiments/nce-fashion-mnist.sh
#   STEP=report   scripts/experiments/nce-fashion-mnist.sh   # the table (mean ± std over the seeds found)
#
# The FP32 model the final trainings start from (and `nce sensitivity` reads) comes from
# scripts/experiments/qat-fashion-mnist.sh; the searches start from examples/resnet20-w2a2-fashion.ot.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:-runs/nce-fashion}
T=${T:-0.5}
SEARCH_EPOCHS=${SEARCH_EPOCHS:-12}
SEARCH_SUBSET=${SEARCH_SUBSET:-10000}
ARCH_LR=${ARCH_LR:-0.003}
FINAL_EPOCHS=${FINAL_EPOCHS:-2}
FINAL_SUBSET=${FINAL_SUBSET:-10000}
SEEDS=${SEEDS:-0}
STEP=${STEP:-all}
THREADS=${THREADS:-1}
PROFILE=${PROFILE:-hw-profiles/npu-int2-array.toml}
nce=target/release/nce
[ -x $nce ] || cargo build --release --quiet
FP32=runs/qat-fashion/fp32/checkpoint.ot
[ -f $FP32 ] || EPOCHS_Q=0 scripts/experiments/qat-fashion-mnist.sh

search() { # name threshold
  [ -f "$OUT/$1/arch.toml" ] && return 0
  $nce search --profile "$PROFILE" --model resnet20 --data fashion-mnist --epochs "$SEARCH_EPOCHS" \
    --train-subset "$SEARCH_SUBSET" --test-subset 1000 --batch-size 64 --arch-lr "$ARCH_LR" --lr 0.02 \
    --init examples/resnet20-w2a2-fashion.ot --threshold "$2" --threads "$THREADS" --seed 0 \
    --out "$OUT/$1" --resume
}
final() { # name seed [--arch file]
  local dir="$OUT/final-$1-s$2" seed=$2; shift 2
  if [ -f "$dir/metrics.jsonl" ] && [ "$(wc -l < "$dir/metrics.jsonl")" -ge "$FINAL_EPOCHS" ]; then return 0; fi
  $nce train --model resnet20 --data fashion-mnist --bits 2 --epochs "$FINAL_EPOCHS" --lr 0.02 \
    --warmup-epochs 0 --train-subset "$FINAL_SUBSET" --threads "$THREADS" --checkpoint-every 100 \
    --seed "$seed" --init $FP32 --out "$dir" --resume "$@"
}
case $STEP in
  search|all)
    search nce "$T" & search tas inf & wait ;;
esac
case $STEP in
  final|all)
    [ -f "$OUT/sensitivity/sensitivity.csv" ] || \
      $nce sensitivity $FP32 --val-images 1000 --threads "$THREADS" --out "$OUT/sensitivity" &
    for seed in $SEEDS; do
      final uniform "$seed" & final nce "$seed" --arch "$OUT/nce/arch.toml" &
      # A search that kept every base width is the uniform network: same run, not repeated.
      if [ "$(grep '^widths' "$OUT/tas/arch.toml" | tr -d ' ')" != "$(grep '^base_widths' "$OUT/tas/arch.toml" | sed 's/base_//' | tr -d ' ')" ]; then
        final tas "$seed" --arch "$OUT/tas/arch.toml" &
      fi
      wait
    done ;;
esac
case $STEP in
  report|all) python3 scripts/experiments/nce-table.py "$OUT" ;;
esac
