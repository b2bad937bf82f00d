#!/usr/bin/env bash
# Does a sensitivity measure predict what widening a layer buys? (issue #28, item 2;
# acceptance rule written in docs/results.md, "Which sensitivity predicts widening", before any
# unit ran.)
#
# From one trained W2A2 checkpoint:
#   sensitivity     `nce sensitivity` on the validation split (the last VAL training images):
#                   one-off gain and FIT per layer, summed per width slot
#   control-sS      a short W2A2 fine-tune (KD from the FP32 teacher) at the base widths, seed S
#   slotK-sS        the same fine-tune with slot K widened WIDEN× (new channels quiet:
#                   `--widen-init quiet`, so it starts as the trained network), seed S
# The truth for slot K is acc(slotK-sS) − acc(control-sS) on the validation split (never
# trained on: `--val-images`), averaged over seeds; then truth-table.py gives each measure's
# Spearman ρ against it with a 95 % interval.
#
#   scripts/experiments/sensitivity-truth.sh                 # resumable: rerun after any stop
#   STAGES=report scripts/experiments/sensitivity-truth.sh   # the table from what is done
#   MODEL=resnet20 CKPT=examples/resnet20-w2a2-fashion.ot TEACHER=examples/resnet20-fp32-fashion.ot …
#
# Runs niced; one heavy job at a time (docs: platform notes). Finished units' metrics are copied
# to experiments/sensitivity-truth/$MODEL so any clone resumes where this one stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."

MODEL=${MODEL:-mobilenetv2x0.35}
CKPT=${CKPT:-examples/mobilenetv2-w2a2-fashion.ot}
TEACHER=${TEACHER:-examples/mobilenetv2-fp32-fashion.ot}
STEPS=${STEPS:-150}          # fine-tune steps of 128 images
LR=${LR:-0.005}
WIDEN=${WIDEN:-2}            # widening factor of the probed slot
VAL=${VAL:-10000}            # validation images: the last VAL of the training set
SEEDS=${SEEDS:-0 1}
SLOTS=${SLOTS:-}             # default: every slot; e.g. SLOTS="1 2" for a smoke run
THREADS=${THREADS:-2}
OUT=${OUT:-runs/sensitivity-truth/$MODEL}
KEEP=${KEEP:-experiments/sensitivity-truth/$MODEL}
STAGES=${STAGES:-restore sensitivity probes report}
BIN=${NCE_BIN:-target/release/nce}
export OMP_WAIT_POLICY=PASSIVE

[ -n "${NCE_BIN:-}" ] || cargo build --release --quiet # incremental: never a stale binary
mkdir -p "$OUT/bin" "$KEEP"
cp "$BIN" "$OUT/bin/nce.new" && mv "$OUT/bin/nce.new" "$OUT/bin/nce"
nce() { nice -n 19 "$OUT/bin/nce" "$@"; }

# The slots and base widths, by name (`nce cost --json` lists every layer of each slot).
nce cost --model "$MODEL" --data fashion-mnist --profile hw-profiles/nce-flops-params.toml --json > "$OUT/cost.json"
read -r -a BASE < <(python3 -c 'import json,sys; print(" ".join(str(s["width"]) for s in json.load(open(sys.argv[1]))["slots"]))' "$OUT/cost.json")
[ -n "$SLOTS" ] || SLOTS=$(seq 0 $((${#BASE[@]} - 1)) | tr '\n' ' ')

widths_for() { # slot (or "control") -> comma-separated widths
  local w=("${BASE[@]}")
  [ "$1" = control ] || w[$1]=$(python3 -c "print(round(${BASE[$1]} * $WIDEN))")
  (IFS=,; echo "${w[*]}")
}

probe() { # name widths seed
  local dir=$OUT/$1
  if [ -f "$dir/metrics.jsonl" ] && [ "$(grep -c . "$dir/metrics.jsonl")" -ge 1 ]; then return 0; fi
  echo "[truth] $(date +%T) $1" >&2
  nce train --model "$MODEL" --data fashion-mnist --bits 2 --epochs 1 --warmup-epochs 0 --lr "$LR" \
    --train-subset $((STEPS * 128)) --val-images "$VAL" --batch-size 128 --seed "$3" --threads "$THREADS" \
    --init "$CKPT" --widen-init quiet --widths "$2" --teacher "$TEACHER" --kd-alpha 0.9 --kd-temperature 4 \
    --checkpoint-every 50 --quiet --resume --out "$dir"
  mkdir -p "$KEEP/$1" && cp "$dir/metrics.jsonl" "$KEEP/$1/metrics.jsonl"
  rm -f "$dir/checkpoint.ot" # the probe's result is its metrics; its weights are not needed
}

for stage in $STAGES; do
  case $stage in
    restore) # committed records of finished units
      for d in "$KEEP"/*/; do
        [ -f "$d/metrics.jsonl" ] || continue
        mkdir -p "$OUT/$(basename "$d")" && cp -n "$d/metrics.jsonl" "$OUT/$(basename "$d")/" 2>/dev/null || true
      done
      [ -f "$KEEP/sensitivity/sensitivity.csv" ] && mkdir -p "$OUT/sensitivity" && cp -n "$KEEP/sensitivity/sensitivity.csv" "$OUT/sensitivity/" || true ;;
    sensitivity)
      if [ ! -f "$OUT/sensitivity/sensitivity.csv" ]; then
        echo "[truth] $(date +%T) sensitivity" >&2
        nce sensitivity "$CKPT" --val-images "$VAL" --threads "$THREADS" --quiet --out "$OUT/sensitivity" > "$OUT/sensitivity.txt"
        mkdir -p "$KEEP/sensitivity" && cp "$OUT/sensitivity/sensitivity.csv" "$KEEP/sensitivity/"
      fi ;;
    probes)
      for seed in $SEEDS; do
        probe "control-s$seed" "$(widths_for control)" "$seed"
        for k in $SLOTS; do probe "slot$k-s$seed" "$(widths_for "$k")" "$seed"; done
      done ;;
    report) python3 scripts/experiments/truth-table.py "$OUT" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
