#!/usr/bin/env bash
# The BA-SAM study in miniature (issue 12): does a model run at a longer token sequence than it was
# trained at degrade, and do NSF / BM-AM help?
#
#   bash scripts/study.sh                 # the whole study (hours on 2 CPU cores; a GPU: DEVICE=cuda)
#   MODE=quick bash scripts/study.sh      # the same code on a handful of images and steps (CI)
#   STUDY_CKPT=docs/results/study_model/basam_tiny_v4.safetensors bash scripts/study.sh   # skip step 1: the committed study model
#   PARTS="ft hq" bash scripts/study.sh   # some of steps 2-4 (zero_shot, ft, hq; default all), e.g. beside
#                                         # a running zero-shot grid to fill the core it leaves idle
#
# 1. The study model: recipe basam_tiny_v4 (STUDY_RECIPE), trained at ONE resolution (256 px) in
#    SAM's frame (longest side 256, zero padding) on whole images: no scale augmentation, flips only.
#    A larger test size is then a longer token sequence and nothing else (no FixRes object-size
#    shift, no framing shift). STUDY_CKPT=PATH skips the training and uses those weights.
# 2. Zero-shot at 1x, 2x, 3x, 4x the training grid (256/512/768/1024 px) on every DUTS-TE image and
#    the held-out part of Kvasir-SEG (:split=test, never trained on), one interior point (the pixel
#    farthest from the mask boundary), in ONE evaluate run so that every variant is paired with the
#    same vanilla: vanilla, nsf, basam (beta 1, manhattan) and one knob changed at a time: the
#    distance (euclidean, flat), beta 0.1 / 0.3, the NSF counting rule (image), NSF on the decoder.
# 3. Fine-tuned as the paper does, at the larger resolution (512 px, 2x): the slopes alone, the slopes
#    with the decoder, and the control the paper lacks: the decoder alone with vanilla attention
#    (is a gain BA-SAM's, or any fine-tuning at the new size's?). Compared image by image with the
#    untuned model (ft_vs_zero_shot.md) and with the decoder-only control (ft_vs_decoder_only.md).
# 4. HQ-SAM's output fusion (independent / add / product): an HQ variant of the study model (HQ-SAM's
#    decoder on it, --architecture '{"hq": true}'), its HQ modules trained on the frozen model as
#    HQ-SAM is trained, once per fusion mode; evaluated at 1x (RES_HQ) and compared image by image with
#    the plain model and with each other (hq_fusion_vs_plain.md, hq_fusion_vs_independent.md).
# Every evaluate folder holds summary.md / summary.json with the paired differences (each variant
# minus vanilla, each size minus 256 px) and their 95 % bootstrap intervals over images, and a plot
# per dataset with those intervals (plot_<dataset>_paired.png). Every step resumes where it stopped.
# 5. scripts/study_report.py gathers all of it into OUT/report/study.md (+ .json, one plot per dataset).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-full}
OUT=${OUT:-runs/study_v4}
DEVICE=${DEVICE:-cpu}
B=${BASAM:-.venv/bin/basam}
PY=${PYTHON:-.venv/bin/python}
# PROCS=2: evaluate and train as 2 processes (torchrun; images / batches sharded, one thread each),
# which on 2 CPU cores gets more done than one process with 2 threads. Same numbers either way (the
# training batch is split between the processes, so the global batch and the samples are the same).
PROCS=${PROCS:-1}
PARTS=${PARTS:-zero_shot ft hq}
for part in $PARTS; do
  case $part in zero_shot|ft|hq) ;; *) echo "study.sh: PARTS takes zero_shot, ft, hq; got '$part'" >&2; exit 2;; esac
done
part() { [[ " $PARTS " == *" $1 "* ]]; }
SHARED=${SHARED:-../shared/data}
STUDY_RECIPE=${STUDY_RECIPE:-basam_tiny_v4}
EVAL_DATA="--data $SHARED/duts-te --data $SHARED/kvasir-seg:split=test"
if [ "$MODE" = quick ]; then  # DUTS-TE only, two images, two steps: minutes, for CI
  RES="256 512"; RES_HQ="256 512"; RES_FT="256 512"; LIMIT="--max-images 2"; STEPS=2; FT_STEPS=2; HQ_STEPS=2; BATCH=2; FT_BATCH=2
  VAL="--eval-every 0 --val-max-images 2"
  EVAL_DATA="--data $SHARED/duts-te"
elif [ "$MODE" = full ]; then
  # The fine-tuned models at the size they were tuned at, the HQ ones at the size they were trained
  # at: what fits a 2-core session after the zero-shot grid (RES_FT="512 1024" RES_HQ="256 1024" for more).
  RES="256 512 768 1024"; RES_HQ=${RES_HQ:-256}; RES_FT=${RES_FT:-512}; LIMIT=""; STEPS=""
  # 150 steps x 8 at 512 px for 30 slopes (or the decoder), 300 x 16 for the HQ modules: the same budget
  FT_STEPS=${FT_STEPS:-150}; HQ_STEPS=${HQ_STEPS:-300}
  BATCH=16; FT_BATCH=8; VAL=""
else
  echo "study.sh: MODE must be quick or full, got '$MODE'" >&2; exit 2
fi
mkdir -p "$OUT"
Q=-q
last_checkpoint() {  # the weights of a training run's newest checkpoint
  echo "$1/checkpoints/$(tr -d '[:space:]' < "$1/checkpoints/latest")/model.safetensors"
}

# 1. The study model (resumable: rerun the script after an interruption).
if [ -n "${STUDY_CKPT:-}" ]; then
  CKPT=$STUDY_CKPT
else
  $B train --recipe "$STUDY_RECIPE" ${STEPS:+--steps "$STEPS"} --batch-size "$BATCH" $VAL \
    --cache-dir "$OUT/cache" --device "$DEVICE" --out "$OUT/study_model" --resume $Q
  CKPT=$(last_checkpoint "$OUT/study_model")
fi
[ -f "$CKPT" ] || { echo "study.sh: no study model at $CKPT" >&2; exit 1; }

run_basam() {  # run_basam evaluate|train ARGS...: one process, or PROCS processes under torchrun
  local what=$1; shift
  if [ "$PROCS" -gt 1 ]; then
    OMP_NUM_THREADS=1 $PY -m torch.distributed.run --standalone --nproc_per_node "$PROCS" -m "basam.$what" "$@"
  else
    $B "$what" "$@"
  fi
}

evaluate() {  # evaluate NAME CHECKPOINT [extra evaluate flags...]
  local name=$1 ckpt=$2; shift 2
  run_basam evaluate $EVAL_DATA --model basam_tiny --checkpoint "$ckpt" --prompt center $LIMIT \
    --device "$DEVICE" --out "$OUT/$name" $Q "$@"
}

train_from_study_model() {  # train_from_study_model NAME [extra train flags...]: the study model's data and frame
  local name=$1; shift
  run_basam train --model basam_tiny --checkpoint "$CKPT" --data "$SHARED/duts-tr" --data "$SHARED/kvasir-seg:split=train" \
    --frame longest --crop-scale 1.0,1.0 --prompt mixed --point-single-weight 1.0 $VAL \
    --cache-dir "$OUT/cache" --cache-side 384 --device "$DEVICE" --out "$OUT/$name" --resume $Q "$@"
}

finished() {  # finished RUN WHAT: is the evaluate run RUN done? If not, say that WHAT waits for it
  # (e.g. PARTS=ft beside a zero-shot grid still running)
  [ -f "$OUT/$1/summary.json" ] && return 0
  echo "study.sh: $2 needs $1 finished first; rerun study.sh then (it resumes)" >&2; return 1
}

compare() {  # compare OUTNAME REFERENCE REFERENCE_NAME [--reference-attention P] NAME=FOLDER...
  local name=$1 ref=$2 ref_name=$3; shift 3
  finished "$ref" "$name.md" || return 0
  $PY scripts/compare_runs.py --reference "$OUT/$ref" --reference-name "$ref_name" "$@" --out "$OUT/$name.md" > /dev/null
}

# 2. Zero-shot: every variant in one run, paired with the same vanilla (listed first).
if part zero_shot; then
  evaluate zero_shot "$CKPT" --resolutions $RES --beta 1.0 --attention vanilla nsf nsf:count=image nsf:decoder \
    basam basam:euclidean basam:flat basam:beta=0.1 basam:beta=0.3 basam:count=image basam:decoder
fi

# 3. Fine-tuned at 2x the training grid, from beta 0.1 as the paper does; the decoder-only control.
# batch 8 at 512 px: each step costs 4x one at 256 px, and 1,200 samples are plenty for 30 slopes
if part ft; then
  FT="--resolution 512 --steps $FT_STEPS --batch-size $((FT_BATCH / PROCS)) --warmup 10 --weight-decay 0"
  train_from_study_model ft_slopes --attention basam --beta 0.1 --train slopes --lr 2e-3 $FT
  train_from_study_model ft_decoder_slopes --attention basam --beta 0.1 --train decoder+slopes --lr 2e-4 $FT
  train_from_study_model ft_decoder --attention vanilla --train decoder --lr 2e-4 $FT
  evaluate fine_tuned_slopes "$(last_checkpoint "$OUT/ft_slopes")" --resolutions $RES_FT --attention basam
  evaluate fine_tuned_decoder_slopes "$(last_checkpoint "$OUT/ft_decoder_slopes")" --resolutions $RES_FT --attention vanilla basam
  evaluate fine_tuned_decoder "$(last_checkpoint "$OUT/ft_decoder")" --resolutions $RES_FT --attention vanilla
  compare ft_vs_zero_shot zero_shot "the untuned study model, vanilla" --reference-attention vanilla \
    "slopes=$OUT/fine_tuned_slopes" "decoder+slopes=$OUT/fine_tuned_decoder_slopes" "decoder=$OUT/fine_tuned_decoder"
  compare ft_vs_decoder_only fine_tuned_decoder "the decoder-only control (vanilla)" --reference-attention vanilla \
    "decoder+slopes=$OUT/fine_tuned_decoder_slopes"
fi

# 4. HQ-SAM's fusion modes on the study model: its HQ modules trained at 256 px, everything else frozen.
if part hq; then
  HQ_RUNS=()
  for fusion in independent add product; do
    train_from_study_model "hq_train_$fusion" --architecture '{"hq": true}' --attention vanilla --train hq --hq-fusion "$fusion" \
      --resolution 256 --steps "$HQ_STEPS" --batch-size $((BATCH / PROCS)) --lr 1e-3 --warmup 50
    evaluate "hq_$fusion" "$(last_checkpoint "$OUT/hq_train_$fusion")" --resolutions $RES_HQ --attention vanilla basam --beta 1.0
    HQ_RUNS+=("$fusion=$OUT/hq_$fusion")
  done
  compare hq_fusion_vs_plain zero_shot "the plain study model" "${HQ_RUNS[@]}"
  compare hq_fusion_vs_independent hq_independent "HQ independent" "${HQ_RUNS[@]:1}"
fi
# 5. The tables and plots of all of it (docs/results/study/ holds the committed ones).
if finished zero_shot "the report"; then
  $PY scripts/study_report.py --study "$OUT" --out "$OUT/report" > /dev/null
fi
echo "study.sh ($MODE): results in $OUT/report/study.md, $OUT/*/summary.md and $OUT/{ft,hq_fusion}_*.md"
