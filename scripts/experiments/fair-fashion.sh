#!/usr/bin/env bash
# The fair NCE experiment on Fashion-MNIST (protocol and acceptance rule: docs/results.md,
# "NCE vs uniform W2A2 at equal cost"; settings: presets/fair-fashion.toml).
#
# Every network compared gets the same final treatment: FP32 training of its own architecture
# from scratch, then W2A2 training initialised from that FP32 model with knowledge distillation
# from one shared FP32 ResNet-20 teacher (the uniform arm's own FP32 run), on all 60,000
# training images, evaluated on all 10,000 test images. Arms, all under
# hw-profiles/nce-flops-params.toml (MACs <= 1.0x, params <= 1.0x the base ResNet-20):
#   uniform   base widths
#   nce-sK    NCE search (threshold T), search seed K
#   tas       TAS with a static wide space (candidates 0.5x..1.5x, no expansion)
#   scaled    every width scaled by one factor to NCE's MACs (only if NCE landed below 0.97x)
#
# Another budget is another preset: PRESET=presets/fair-fashion-0.75x.toml runs the same arms
# under hw-profiles/nce-flops-params-0.75x.toml, in its own folders (the preset's `out` and
# `keep`), with the preset's `baseline = "scaled"`: the reference arm is then every base width
# times the largest single factor within the budgets (stage `baseline`), since the uniform
# network itself does not fit. The teacher is the same uniform FP32 model.
#
# Resumable: rerun the same command after an interruption (even kill -9); finished stages are
# skipped and the interrupted one resumes from its checkpoint. One heavy job at a time.
#
# Survives a fresh clone: runs/ is not tracked, so every finished unit (metrics, architectures,
# search logs, and the checkpoints a later stage starts from) is copied to the tracked record
# experiments/fair-fashion/, and the driver restores runs/ from it before it starts.
# `STAGES=persist` also records the checkpoints of unfinished units, so that the next clone
# resumes them exactly (commit experiments/ afterwards).
#
# Order: the units that decide the verdict first. `final` finishes one arm (its FP32 training,
# then its W2A2 seeds) before it starts the next, in the order uniform, NCE by search seed, TAS,
# scaled; the searches come between the two `final` stages. The protocol is the same in any
# order. (`fp32` and `w2a2` run one of the two steps for every arm.)
#
#   scripts/experiments/fair-fashion.sh            # everything, in order
#   STAGES=teacher scripts/experiments/fair-fashion.sh
#   STAGES=report  scripts/experiments/fair-fashion.sh
#   STAGES=persist scripts/experiments/fair-fashion.sh
#   STAGES="restore status" scripts/experiments/fair-fashion.sh   # how far every unit got
#   PRESET=presets/fair-fashion-0.75x.toml scripts/experiments/fair-fashion.sh   # at 0.75x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PRESET=${PRESET:-presets/fair-fashion.toml}
STAGES=${STAGES:-restore teacher baseline final search final persist report}
THREADS=${THREADS:-2}
export OMP_WAIT_POLICY=PASSIVE

# Settings come from the preset file (one place, also read by the report). `val KEY [DEFAULT]`.
val() { python3 - "$PRESET" "$@" <<'PY'
import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))
for k in sys.argv[2].split("."):
    if k not in d and len(sys.argv) > 3:
        d = sys.argv[3]
        break
    d = d[k]
print(",".join(map(str, d)) if isinstance(d, list) else d)
PY
}
OUT=${OUT:-$(val out runs/fair-fashion)}
KEEP=${KEEP:-$(val keep experiments/fair-fashion)}
BASELINE=$(val baseline uniform)
case $BASELINE in uniform|scaled) ;; *) echo "$PRESET: baseline must be \"uniform\" or \"scaled\", not \"$BASELINE\"" >&2; exit 2 ;; esac
TABLE=(python3 scripts/experiments/fair-table.py "$OUT" --preset "$PRESET")
PROFILE=$(val profile)
FP_EPOCHS=$(val fp32.epochs); FP_LR=$(val fp32.lr)
Q_EPOCHS=$(val w2a2.epochs); Q_LR=$(val w2a2.lr); SEEDS=$(val w2a2.seeds | tr , ' ')
KD_ALPHA=$(val w2a2.kd_alpha); KD_T=$(val w2a2.kd_temperature)
S_EPOCHS=$(val search.epochs); S_WARMUP=$(val search.warmup_epochs); S_LR=$(val search.lr)
S_ARCH_LR=$(val search.arch_lr); S_SUBSET=$(val search.train_subset); T=$(val search.threshold)
S_SEEDS=$(val search.seeds | tr , ' '); TAS_RATIOS=$(val search.tas_ratios); DERIVE=$(val search.derive)
S_INIT_EPOCHS=$(val search.init_epochs)
BATCH=$(val batch_size); WD=$(val weight_decay)

mkdir -p "$OUT/bin"
# NCE_BIN: another build of the binary (the tests use their debug one).
BIN=${NCE_BIN:-target/release/nce}
[ -n "${NCE_BIN:-}" ] || [ -x "$BIN" ] || cargo build --release --quiet
# Run a copy so rebuilding the tree never touches a running experiment.
cp "$BIN" "$OUT/bin/nce.new" && mv "$OUT/bin/nce.new" "$OUT/bin/nce"
nce() { nice -n 19 "$OUT/bin/nce" "$@"; }
TEACHER=$OUT/fp32-uniform/checkpoint.ot
# Every search starts from the same short W2A2 QAT of the uniform FP32 model (trained clips and
# 2-bit-adapted weights); from the FP32 weights directly the supernet sits near chance.
SEARCH_INIT=$OUT/search-init/checkpoint.ot

done_epochs() { # run dir -> epochs finished
  done_epochs_of "$1/metrics.jsonl"
}
done_epochs_of() { # jsonl log -> lines (epochs) in it
  if [ -f "$1" ]; then grep -c . "$1" || true; else echo 0; fi
}
# A unit's checkpoint is kept when a later stage starts from it (or when it is unfinished and
# `persist` is asked for); otherwise only its metrics and logs are. A unit with a SOURCE note was
# copied from a committed file (the teacher), so its checkpoint is not kept twice.
needed_later() { [ -f "$1/SOURCE" ] && return 1; case $(basename "$1") in search-init|fp32-*|w2a2-uniform-s0) return 0 ;; *) return 1 ;; esac; }
keep_unit() { # run dir [all]: copy the record of one unit to $KEEP
  local dir=$1 dest=$KEEP/$(basename "$1") f
  mkdir -p "$dest"
  for f in metrics.jsonl arch.toml search.jsonl widths.svg probs.svg costs.svg SOURCE; do
    [ -f "$dir/$f" ] && cp "$dir/$f" "$dest/$f.new" && mv "$dest/$f.new" "$dest/$f"
  done
  for f in checkpoint.ot search-checkpoint.ot; do
    [ -f "$dir/$f" ] || continue
    if { [ "$f" = checkpoint.ot ] && needed_later "$dir"; } || [ "${2:-}" = all ]; then
      cp "$dir/$f" "$dest/$f.new" && mv "$dest/$f.new" "$dest/$f"
    else
      rm -f "$dest/$f" # an unfinished unit's checkpoint, kept earlier, is no longer needed
    fi
  done
  true
}
unit_finished() { # run dir: a finished search or training
  local want
  case $(basename "$1") in fp32-*) want=$FP_EPOCHS ;; search-init) want=$S_INIT_EPOCHS ;; *) want=$Q_EPOCHS ;; esac
  [ -f "$1/arch.toml" ] || [ -f "$1/SOURCE" ] || [ "$(done_epochs "$1")" -ge "$want" ]
}
train() { # dir epochs extra-args...
  local dir=$1 epochs=$2; shift 2
  [ "$(done_epochs "$dir")" -ge "$epochs" ] && return 0
  echo "[fair] $(date +%T) train $dir" >&2
  nce train --model resnet20 --data fashion-mnist --epochs "$epochs" --batch-size "$BATCH" \
    --weight-decay "$WD" --threads "$THREADS" --checkpoint-every 100 --quiet --out "$dir" --resume "$@"
  keep_unit "$dir"
}
search() { # name seed threshold ratios
  [ -f "$OUT/$1/arch.toml" ] && return 0
  echo "[fair] $(date +%T) search $1" >&2
  nce search --profile "$PROFILE" --model resnet20 --data fashion-mnist --epochs "$S_EPOCHS" \
    --warmup-epochs "$S_WARMUP" --train-subset "$S_SUBSET" --test-subset 1000 --batch-size "$BATCH" \
    --lr "$S_LR" --arch-lr "$S_ARCH_LR" --threshold "$3" --ratios "$4" --derive "$DERIVE" \
    --init "$SEARCH_INIT" --threads "$THREADS" --seed "$2" --out "$OUT/$1" --resume --quiet
  keep_unit "$OUT/$1"
}
arms() { # every arm with an architecture, as "name arch-file-or-empty"; the baseline first
  if [ "$BASELINE" = uniform ]; then echo "uniform -"
  elif [ -f "$OUT/scaled/arch.toml" ]; then echo "scaled $OUT/scaled/arch.toml"; fi
  for s in $S_SEEDS; do [ -f "$OUT/nce-s$s/arch.toml" ] && echo "nce-s$s $OUT/nce-s$s/arch.toml"; done
  [ -f "$OUT/tas/arch.toml" ] && echo "tas $OUT/tas/arch.toml"
  [ "$BASELINE" = uniform ] && [ -f "$OUT/scaled/arch.toml" ] && echo "scaled $OUT/scaled/arch.toml"
  true
}
arch_args() { [ "$1" = - ] || echo "--arch $1"; }
fp32() { # arm arch: the arm's own FP32 training (the uniform arm's is the teacher)
  [ "$1" = uniform ] && return 0
  # shellcheck disable=SC2046
  train "$OUT/fp32-$1" "$FP_EPOCHS" --bits 32 --lr "$FP_LR" --seed 0 $(arch_args "$2")
}
w2a2() { # arm arch seed: W2A2 from the arm's FP32 model, KD from the shared teacher
  local init=$OUT/fp32-$1/checkpoint.ot
  # shellcheck disable=SC2046
  train "$OUT/w2a2-$1-s$3" "$Q_EPOCHS" --bits 2 --lr "$Q_LR" --warmup-epochs 0 --seed "$3" \
    --init "$init" --teacher "$TEACHER" --kd-alpha "$KD_ALPHA" --kd-temperature "$KD_T" $(arch_args "$2")
}

for stage in $STAGES; do
  case $stage in
    restore) # the tracked record -> runs/, never overwriting what runs/ already has
      for d in "$KEEP"/*/; do
        [ -d "$d" ] || continue
        mkdir -p "$OUT/$(basename "$d")"
        cp -n "$d"* "$OUT/$(basename "$d")/"
      done ;;
    teacher)
      # The teacher of this experiment ran in the first session (15 epochs, 93.78 %) and is
      # committed, stripped, as examples/resnet20-fp32-fashion.ot; a clone without it retrains.
      if [ ! -f "$TEACHER" ] && [ -f examples/resnet20-fp32-fashion.ot ]; then
        mkdir -p "$OUT/fp32-uniform"
        cp examples/resnet20-fp32-fashion.ot "$TEACHER"
        echo "examples/resnet20-fp32-fashion.ot: this run's FP32 teacher, 15 epochs, 93.78 % (first session)" \
          > "$OUT/fp32-uniform/SOURCE"
      fi
      [ -f "$OUT/fp32-uniform/SOURCE" ] || train "$OUT/fp32-uniform" "$FP_EPOCHS" --bits 32 --lr "$FP_LR" --seed 0 ;;
    baseline) # a `scaled` baseline's architecture (nothing to do for `uniform`)
      "${TABLE[@]}" --baseline-arch
      [ ! -f "$OUT/scaled/arch.toml" ] || keep_unit "$OUT/scaled" ;;
    search)
      train "$OUT/search-init" "$S_INIT_EPOCHS" --bits 2 --lr "$S_LR" --warmup-epochs 0 --train-subset "$S_SUBSET" \
        --init "$TEACHER" --seed 0
      for s in $S_SEEDS; do search "nce-s$s" "$s" "$T" 0.5,0.75,1.0; done
      search tas 0 inf "$TAS_RATIOS"
      "${TABLE[@]}" --scaled-arch "$PROFILE" ;;
    final) arms | while read -r name arch; do fp32 "$name" "$arch"; for seed in $SEEDS; do w2a2 "$name" "$arch" "$seed"; done; done ;;
    fp32) arms | while read -r name arch; do fp32 "$name" "$arch"; done ;;
    w2a2) for seed in $SEEDS; do arms | while read -r name arch; do w2a2 "$name" "$arch" "$seed"; done; done ;;
    status) # every unit of the protocol and how far it got (after `restore` in a fresh clone)
      unit_status() { printf '%-22s %s\n' "$1" "$2"; }
      search_status() { # name
        if [ -f "$OUT/$1/arch.toml" ]; then unit_status "$1" "search finished"
        else unit_status "$1" "search $(done_epochs_of "$OUT/$1/search.jsonl")/$S_EPOCHS epochs"; fi
      }
      unit_status search-init "$(done_epochs "$OUT/search-init")/$S_INIT_EPOCHS epochs"
      for s in $S_SEEDS; do search_status "nce-s$s"; done
      search_status tas
      arms | while read -r name _; do
        [ "$name" = uniform ] || unit_status "fp32-$name" "$(done_epochs "$OUT/fp32-$name")/$FP_EPOCHS epochs"
        for seed in $SEEDS; do unit_status "w2a2-$name-s$seed" "$(done_epochs "$OUT/w2a2-$name-s$seed")/$Q_EPOCHS epochs"; done
      done ;;
    persist) # unfinished units too, with their checkpoints, so a fresh clone resumes them exactly
      for d in "$OUT"/*/; do
        case $(basename "$d") in bin|sensitivity) continue ;; esac
        if unit_finished "$d"; then keep_unit "$d"; else keep_unit "$d" all; fi
      done ;;
    report)
      # Calibrated sensitivity: one-off gains of the trained uniform W2A2 model (seed 0).
      if [ ! -f "$OUT/sensitivity/sensitivity.csv" ] && [ "$(done_epochs "$OUT/w2a2-uniform-s0")" -ge "$Q_EPOCHS" ]; then
        nce sensitivity "$OUT/w2a2-uniform-s0/checkpoint.ot" --threads "$THREADS" --out "$OUT/sensitivity" > /dev/null
      fi
      "${TABLE[@]}" --svg "$OUT/accuracy.svg" --widths-svg "$OUT/widths-by-arm.svg" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
