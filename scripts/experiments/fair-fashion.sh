#!/usr/bin/env bash
# The fair NCE experiment on Fashion-MNIST (protocol and acceptance rule: docs/results.md,
# "NCE vs uniform W2A2 at equal cost"; settings: presets/fair-fashion.toml).
#
# Every network compared gets the same final treatment: FP32 training of its own architecture
# from scratch, then W2A2 training initialised from that FP32 model with knowledge distillation
# from one shared FP32 teacher (the uniform arm's own FP32 run), on all 60,000 training images,
# evaluated on all 10,000 test images. Arms, all under the preset's profile (default
# hw-profiles/nce-flops-params.toml: MACs <= 1.0x, params <= 1.0x the base network):
#   uniform   base widths
#   nce-sK    NCE search (threshold T), search seed K (the preset's search.seeds)
#   tas       TAS with a static wide space (search.tas_ratios, no expansion; no such key: no arm)
#   scaled    every width scaled by one factor to NCE's MACs (only if NCE landed below 0.97x;
#             search.scaled_arm = false: never)
#   nce-sens  NCE search seed 0 with sensitivity-guided expansion (`--expansion sensitivity`)
#   alloc     `nce allocate`: widths from the same sensitivities, no search
# The last two are the preset's [guided] arms (none without that table; issue #28): stage
# `guided` measures `nce sensitivity --val-images N` of the search-init checkpoint (below; it
# trained on the first search.train_subset images only, so the last N of the 60,000 are unseen)
# into sensitivity-val/, then runs the guided search and the allocator from that table
# (guided.measure; guided.prior is the search's γ, guided.alloc_prior the allocator's
# shrinkage). The stage skips itself while guided.measure is empty: the pre-registered study
# "Which sensitivity predicts widening" (docs/results.md) picks the measure before any guided
# unit runs.
#
# Presets (PRESET=FILE; every setting is read from it, also by the report):
#   presets/fair-fashion.toml         ResNet-20 at 1.0x: uniform, nce-s0, nce-s1, tas
#   presets/fair-fashion-0.75x.toml   ResNet-20 at 0.75x: `baseline = "scaled"` (every base width
#                                     times the largest single factor within the budgets, stage
#                                     `baseline`; the uniform network does not fit), nce-s0,
#                                     nce-s1, tas, and the guided nce-sens and alloc (setting (b))
#   presets/fair-mnv2-fashion.toml    MobileNetV2 x0.35 at 1.0x: uniform, nce-s0, nce-sens, alloc
#                                     (setting (a)); its teacher is trained here (teacher_example
#                                     = "": the committed MobileNetV2 FP32 model ran 4 epochs)
# Preset keys beyond the training settings: `model` (default resnet20; --model of every train,
# search, allocate and cost call), `teacher_example` (the committed FP32 teacher that stage
# `teacher` copies in; default examples/resnet20-fp32-fashion.ot; "" = train it), `baseline`,
# `out`, `keep`, and [guided] (arms, measure, prior, alloc_prior, val_images, holm: the methods
# of the setting's Holm-Bonferroni family, read by the report).
#
# Resumable: rerun the same command after an interruption (even kill -9); finished stages are
# skipped and the interrupted one resumes from its checkpoint. One heavy job at a time.
#
# Survives a fresh clone: runs/ is not tracked, so every finished unit (metrics, architectures,
# search logs, sensitivity tables, and the checkpoints a later stage starts from) is copied to
# the tracked record (the preset's `keep`, default experiments/fair-fashion/), and the driver
# restores runs/ from it before it starts. `STAGES=persist` also records the checkpoints of
# unfinished units, so that the next clone resumes them exactly (commit experiments/ afterwards).
#
# Order: the units that decide the verdict first. `final` finishes one arm (its FP32 training,
# then its W2A2 seeds) before it starts the next, in the order baseline, NCE by search seed,
# TAS, scaled, nce-sens, alloc; the searches (stage `search`) and the guided arms (stage
# `guided`) come between the two `final` stages. The protocol is the same in any order. (`fp32`
# and `w2a2` run one of the two steps for every arm.)
#
#   scripts/experiments/fair-fashion.sh            # everything, in order
#   STAGES=teacher scripts/experiments/fair-fashion.sh
#   STAGES=report  scripts/experiments/fair-fashion.sh
#   STAGES=persist scripts/experiments/fair-fashion.sh
#   STAGES="restore status" scripts/experiments/fair-fashion.sh   # how far every unit got
#   PRESET=presets/fair-fashion-0.75x.toml scripts/experiments/fair-fashion.sh   # setting (b)
#   PRESET=presets/fair-mnv2-fashion.toml scripts/experiments/fair-fashion.sh    # setting (a)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PRESET=${PRESET:-presets/fair-fashion.toml}
STAGES=${STAGES:-restore teacher baseline final search guided final persist report}
THREADS=${THREADS:-2}
export OMP_WAIT_POLICY=PASSIVE

# Settings come from the preset file (one place, also read by the report), parsed once: every
# key as a `dotted.key=value` line (lists comma-separated). `val KEY [DEFAULT]`.
PRESET_VALUES=$(python3 - "$PRESET" <<'PY'
import sys, tomllib
def flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", ",".join(map(str, v)) if isinstance(v, list) else str(v)
for k, v in flat(tomllib.load(open(sys.argv[1], "rb"))):
    if "\n" in v:
        sys.exit(f"{sys.argv[1]}: {k}: one line per value, please")
    print(f"{k}={v}")
PY
)
val() { # KEY [DEFAULT]: the preset's value; a key without a default must be there
  local line
  while IFS= read -r line; do
    [ "${line%%=*}" = "$1" ] && { printf '%s\n' "${line#*=}"; return 0; }
  done <<< "$PRESET_VALUES"
  [ $# -ge 2 ] && { printf '%s\n' "$2"; return 0; }
  echo "$PRESET: no key $1" >&2
  return 1
}
OUT=${OUT:-$(val out runs/fair-fashion)}
KEEP=${KEEP:-$(val keep experiments/fair-fashion)}
BASELINE=$(val baseline uniform)
case $BASELINE in uniform|scaled) ;; *) echo "$PRESET: baseline must be \"uniform\" or \"scaled\", not \"$BASELINE\"" >&2; exit 2 ;; esac
TABLE=(python3 scripts/experiments/fair-table.py "$OUT" --preset "$PRESET")
PROFILE=$(val profile)
MODEL=$(val model resnet20)
TEACHER_EXAMPLE=$(val teacher_example examples/resnet20-fp32-fashion.ot)
FP_EPOCHS=$(val fp32.epochs); FP_LR=$(val fp32.lr)
Q_EPOCHS=$(val w2a2.epochs); Q_LR=$(val w2a2.lr); SEEDS=$(val w2a2.seeds | tr , ' ')
KD_ALPHA=$(val w2a2.kd_alpha); KD_T=$(val w2a2.kd_temperature)
S_EPOCHS=$(val search.epochs); S_WARMUP=$(val search.warmup_epochs); S_LR=$(val search.lr)
S_ARCH_LR=$(val search.arch_lr); S_SUBSET=$(val search.train_subset); T=$(val search.threshold)
S_SEEDS=$(val search.seeds | tr , ' '); TAS_RATIOS=$(val search.tas_ratios ""); DERIVE=$(val search.derive)
S_INIT_EPOCHS=$(val search.init_epochs); SCALED_ARM=$(val search.scaled_arm True)
# The guided arms (issue #28): which, and the settings of their sensitivity table.
G_ARMS=" $(val guided.arms "" | tr , ' ') "
guided_arm() { [[ $G_ARMS == *" $1 "* ]]; }
any_guided() { [ -n "${G_ARMS// /}" ]; }
G_MEASURE=$(val guided.measure ""); G_PRIOR=$(val guided.prior 0.5); G_ALLOC_PRIOR=$(val guided.alloc_prior 1)
G_VAL=$(val guided.val_images 10000)
for g in $G_ARMS; do
  case $g in nce-sens|alloc) ;; *) echo "$PRESET: guided.arms may hold \"nce-sens\" and \"alloc\", not \"$g\"" >&2; exit 2 ;; esac
done
# The validation images (the last G_VAL of Fashion-MNIST's 60,000) must be ones search-init
# never trained on (it trained on the first S_SUBSET).
if any_guided && [ $((S_SUBSET + G_VAL)) -gt 60000 ]; then
  echo "$PRESET: search.train_subset + guided.val_images = $((S_SUBSET + G_VAL)) > 60000: the validation images would overlap search-init's training images" >&2
  exit 2
fi
BATCH=$(val batch_size); WD=$(val weight_decay)

mkdir -p "$OUT/bin"
# NCE_BIN: another build of the binary (the tests use their debug one).
BIN=${NCE_BIN:-target/release/nce}
[ -n "${NCE_BIN:-}" ] || cargo build --release --quiet # incremental: a no-op when up to date, never a stale binary
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
  local dir=$1 dest f
  dest=$KEEP/$(basename "$1")
  mkdir -p "$dest"
  for f in metrics.jsonl arch.toml search.jsonl widths.svg probs.svg costs.svg SOURCE sensitivity.csv sensitivity.txt allocate.txt; do
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
unit_finished() { # run dir: a finished search, training or sensitivity table
  local want
  case $(basename "$1") in
    sensitivity-val) [ -f "$1/sensitivity.csv" ]; return ;;
    fp32-*) want=$FP_EPOCHS ;; search-init) want=$S_INIT_EPOCHS ;; *) want=$Q_EPOCHS ;;
  esac
  [ -f "$1/arch.toml" ] || [ -f "$1/SOURCE" ] || [ "$(done_epochs "$1")" -ge "$want" ]
}
train() { # dir epochs extra-args...
  local dir=$1 epochs=$2; shift 2
  [ "$(done_epochs "$dir")" -ge "$epochs" ] && return 0
  echo "[fair] $(date +%T) train $dir" >&2
  nce train --model "$MODEL" --data fashion-mnist --epochs "$epochs" --batch-size "$BATCH" \
    --weight-decay "$WD" --threads "$THREADS" --checkpoint-every 100 --quiet --out "$dir" --resume "$@"
  keep_unit "$dir"
}
search() { # name seed threshold ratios [extra-args...]
  local name=$1 seed=$2 threshold=$3 ratios=$4; shift 4
  [ -f "$OUT/$name/arch.toml" ] && return 0
  echo "[fair] $(date +%T) search $name" >&2
  nce search --profile "$PROFILE" --model "$MODEL" --data fashion-mnist --epochs "$S_EPOCHS" \
    --warmup-epochs "$S_WARMUP" --train-subset "$S_SUBSET" --test-subset 1000 --batch-size "$BATCH" \
    --lr "$S_LR" --arch-lr "$S_ARCH_LR" --threshold "$threshold" --ratios "$ratios" --derive "$DERIVE" \
    --init "$SEARCH_INIT" --threads "$THREADS" --seed "$seed" --out "$OUT/$name" --resume --quiet "$@"
  keep_unit "$OUT/$name"
}
search_init() { # the shared W2A2 QAT every search (and the guided arms' sensitivity) starts from
  train "$OUT/search-init" "$S_INIT_EPOCHS" --bits 2 --lr "$S_LR" --warmup-epochs 0 --train-subset "$S_SUBSET" \
    --init "$TEACHER" --seed 0
}
SENS_VAL=$OUT/sensitivity-val/sensitivity.csv
guided() { # the guided arms: sensitivity of search-init on unseen training images, then each arm
  if [ -z "$G_MEASURE" ]; then
    echo "[fair] guided arms skipped: guided.measure is not set yet (the sensitivity study picks it)" >&2
    return 0
  fi
  search_init # (stage `search` trained it; a no-op once finished)
  if [ ! -f "$SENS_VAL" ]; then
    echo "[fair] $(date +%T) sensitivity of search-init on the last $G_VAL training images" >&2
    mkdir -p "$OUT/sensitivity-val"
    nce sensitivity "$SEARCH_INIT" --val-images "$G_VAL" --threads "$THREADS" --quiet \
      --out "$OUT/sensitivity-val" > "$OUT/sensitivity-val/sensitivity.txt"
    keep_unit "$OUT/sensitivity-val"
  fi
  if guided_arm nce-sens; then
    search nce-sens 0 "$T" 0.5,0.75,1.0 --expansion sensitivity --sensitivity "$SENS_VAL" \
      --sensitivity-measure "$G_MEASURE" --sensitivity-prior "$G_PRIOR"
  fi
  if guided_arm alloc && [ ! -f "$OUT/alloc/arch.toml" ]; then
    echo "[fair] $(date +%T) allocate" >&2
    mkdir -p "$OUT/alloc"
    nce allocate --sensitivity "$SENS_VAL" --measure "$G_MEASURE" --prior "$G_ALLOC_PRIOR" --profile "$PROFILE" \
      --model "$MODEL" --data fashion-mnist -o "$OUT/alloc/arch.toml" > "$OUT/alloc/allocate.txt"
    keep_unit "$OUT/alloc"
  fi
}
arms() { # every arm with an architecture, as "name arch-file-or-empty"; the baseline first
  if [ "$BASELINE" = uniform ]; then echo "uniform -"
  elif [ -f "$OUT/scaled/arch.toml" ]; then echo "scaled $OUT/scaled/arch.toml"; fi
  for s in $S_SEEDS; do [ -f "$OUT/nce-s$s/arch.toml" ] && echo "nce-s$s $OUT/nce-s$s/arch.toml"; done
  [ -f "$OUT/tas/arch.toml" ] && echo "tas $OUT/tas/arch.toml"
  [ "$BASELINE" = uniform ] && [ -f "$OUT/scaled/arch.toml" ] && echo "scaled $OUT/scaled/arch.toml"
  for g in $G_ARMS; do [ -f "$OUT/$g/arch.toml" ] && echo "$g $OUT/$g/arch.toml"; done
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
      # The ResNet-20 teacher ran in the first session (15 epochs, 93.78 %) and is committed,
      # stripped, as examples/resnet20-fp32-fashion.ot (the preset's teacher_example); a clone
      # without it, or a preset with teacher_example = "", trains it (the uniform arm's FP32).
      if [ -n "$TEACHER_EXAMPLE" ] && [ ! -f "$TEACHER" ] && [ -f "$TEACHER_EXAMPLE" ]; then
        mkdir -p "$OUT/fp32-uniform"
        cp "$TEACHER_EXAMPLE" "$TEACHER"
        case $TEACHER_EXAMPLE in
          examples/resnet20-fp32-fashion.ot) note="15 epochs, 93.78 % (first session)" ;;
          *) note="copied from the committed file (preset key teacher_example)" ;;
        esac
        echo "$TEACHER_EXAMPLE: this run's FP32 teacher, $note" > "$OUT/fp32-uniform/SOURCE"
      fi
      [ -f "$OUT/fp32-uniform/SOURCE" ] || train "$OUT/fp32-uniform" "$FP_EPOCHS" --bits 32 --lr "$FP_LR" --seed 0 ;;
    baseline) # a `scaled` baseline's architecture (nothing to do for `uniform`)
      "${TABLE[@]}" --baseline-arch
      [ ! -f "$OUT/scaled/arch.toml" ] || keep_unit "$OUT/scaled" ;;
    search)
      search_init
      for s in $S_SEEDS; do search "nce-s$s" "$s" "$T" 0.5,0.75,1.0; done
      [ -z "$TAS_RATIOS" ] || search tas 0 inf "$TAS_RATIOS"
      [ "$SCALED_ARM" != True ] || "${TABLE[@]}" --scaled-arch "$PROFILE" ;;
    guided) ! any_guided || guided ;;
    final) arms | while read -r name arch; do fp32 "$name" "$arch"; for seed in $SEEDS; do w2a2 "$name" "$arch" "$seed"; done; done ;;
    fp32) arms | while read -r name arch; do fp32 "$name" "$arch"; done ;;
    w2a2) for seed in $SEEDS; do arms | while read -r name arch; do w2a2 "$name" "$arch" "$seed"; done; done ;;
    status) # every unit of the protocol and how far it got (after `restore` in a fresh clone)
      unit_status() { printf '%-22s %s\n' "$1" "$2"; }
      search_status() { # name
        if [ -f "$OUT/$1/arch.toml" ]; then unit_status "$1" "search finished"
        else unit_status "$1" "search $(done_epochs_of "$OUT/$1/search.jsonl")/$S_EPOCHS epochs"; fi
      }
      if [ ! -f "$OUT/fp32-uniform/SOURCE" ]; then # a teacher trained in this run
        unit_status fp32-uniform "$(done_epochs "$OUT/fp32-uniform")/$FP_EPOCHS epochs"
      fi
      unit_status search-init "$(done_epochs "$OUT/search-init")/$S_INIT_EPOCHS epochs"
      for s in $S_SEEDS; do search_status "nce-s$s"; done
      [ -z "$TAS_RATIOS" ] || search_status tas
      if any_guided; then
        if [ -f "$SENS_VAL" ]; then unit_status sensitivity-val finished
        elif [ -z "$G_MEASURE" ]; then unit_status sensitivity-val "waits for guided.measure"
        else unit_status sensitivity-val "not yet"; fi
        guided_arm nce-sens && search_status nce-sens
        if guided_arm alloc; then
          if [ -f "$OUT/alloc/arch.toml" ]; then unit_status alloc "allocated"; else unit_status alloc "not yet"; fi
        fi
      fi
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
