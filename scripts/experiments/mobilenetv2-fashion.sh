#!/usr/bin/env bash
# The committed MobileNetV2 examples (docs/results.md, "MobileNetV2 on Fashion-MNIST"):
# FP32 training on all 60,000 training images, then uniform W2A2 (PACT + SAWB, 8-bit stem and
# classifier) initialised from it with distillation from it, then export and a bit-exact check.
# Resumable: rerun after an interruption (even kill -9); finished stages are skipped and the
# interrupted one continues from its checkpoint. One heavy job at a time.
#
#   scripts/experiments/mobilenetv2-fashion.sh                  # everything
#   KEEP=1 scripts/experiments/mobilenetv2-fashion.sh           # ...and copy the results to examples/
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
MODEL=${MODEL:-mobilenetv2x0.35}
EPOCHS_FP=${EPOCHS_FP:-4}
EPOCHS_Q=${EPOCHS_Q:-4}
THREADS=${THREADS:-2}
OUT=${OUT:-runs/mobilenetv2-fashion}
export OMP_WAIT_POLICY=PASSIVE
nce=${NCE_BIN:-target/release/nce}
[ -n "${NCE_BIN:-}" ] || cargo build --release --quiet
done_epochs() { [ -f "$1/metrics.jsonl" ] && wc -l < "$1/metrics.jsonl" || echo 0; }
common=(--model "$MODEL" --data fashion-mnist --threads "$THREADS" --checkpoint-every 50 --seed 0 --quiet --resume)
if [ "$(done_epochs $OUT/fp32)" -lt "$EPOCHS_FP" ]; then
  $nce train "${common[@]}" --bits 32 --epochs "$EPOCHS_FP" --lr 0.1 --warmup-epochs 1 --out $OUT/fp32
fi
if [ "$(done_epochs $OUT/w2a2)" -lt "$EPOCHS_Q" ]; then
  $nce train "${common[@]}" --bits 2 --epochs "$EPOCHS_Q" --lr 0.02 --warmup-epochs 0 \
    --init $OUT/fp32/checkpoint.ot --teacher $OUT/fp32/checkpoint.ot --out $OUT/w2a2
fi
$nce eval $OUT/fp32/checkpoint.ot
$nce eval $OUT/w2a2/checkpoint.ot
$nce strip $OUT/fp32/checkpoint.ot -o $OUT/fp32.ot
$nce strip $OUT/w2a2/checkpoint.ot -o $OUT/w2a2.ot
$nce export $OUT/w2a2.ot -o $OUT/w2a2.nce
$nce validate $OUT/w2a2.nce --data fashion-mnist --backend cpu
if [ "${KEEP:-0}" = 1 ]; then
  cp $OUT/fp32.ot examples/mobilenetv2-fp32-fashion.ot
  cp $OUT/w2a2.ot examples/mobilenetv2-w2a2-fashion.ot
  cp $OUT/w2a2.nce examples/mobilenetv2-w2a2-fashion.nce
fi
