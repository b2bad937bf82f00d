#!/usr/bin/env bash
# FP32 ResNet-20 on Fashion-MNIST, then uniform W2A2 initialised from it (docs/results.md).
# Resumable: rerun the script after an interruption and each stage continues from its
# checkpoint (stages already finished are skipped).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
EPOCHS_FP=${EPOCHS_FP:-3}
EPOCHS_Q=${EPOCHS_Q:-3}
# The first SUBSET training images (file order; the IDX files are shuffled); full test set.
SUBSET=${SUBSET:-15000}
OUT=${OUT:-runs/qat-fashion}
nce=target/release/nce
cargo build --release --quiet
done_epochs() { [ -f "$1/metrics.jsonl" ] && wc -l < "$1/metrics.jsonl" || echo 0; }
if [ "$(done_epochs $OUT/fp32)" -lt "$EPOCHS_FP" ]; then
  $nce train --model resnet20 --data fashion-mnist --bits 32 --epochs "$EPOCHS_FP" \
    --lr 0.1 --warmup-epochs 1 --train-subset "$SUBSET" --threads 2 --checkpoint-every 100 --seed 0 --out $OUT/fp32 --resume
fi
if [ "$(done_epochs $OUT/w2a2)" -lt "$EPOCHS_Q" ]; then
  $nce train --model resnet20 --data fashion-mnist --bits 2 --epochs "$EPOCHS_Q" \
    --lr 0.02 --warmup-epochs 0 --train-subset "$SUBSET" --threads 2 --checkpoint-every 100 --seed 0 \
    --init $OUT/fp32/checkpoint.ot --out $OUT/w2a2 --resume
fi
$nce eval $OUT/fp32/checkpoint.ot
$nce eval $OUT/w2a2/checkpoint.ot
