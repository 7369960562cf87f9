#!/usr/bin/env bash
# The BA-SAM study in miniature (issue 12): does a model run at a longer token sequence than it was
# trained at degrade, and do NSF / BM-AM help?
#
#   bash scripts/study.sh                 # the whole study (hours on 2 CPU cores; a GPU: --device)
#   MODE=quick bash scripts/study.sh      # the same code on a handful of images and steps (CI)
#
# 1. The study model: basam_tiny_v2's recipe, which trains at ONE resolution (256 px) with no scale
#    augmentation (crop_scale 1.0: RandomResizedCrop keeps the whole image), so that test sizes
#    above 256 px are a longer token sequence and not also a FixRes object-size shift. (The
#    bundled basam_tiny is recipe basam_tiny_v3, the same model trained WITH scale augmentation.)
#    6,000 steps take about 66 min on 2 CPU cores; STUDY_CKPT=PATH skips the training and uses
#    those weights, e.g. the committed run docs/results/study_model/basam_tiny_v2_step6000.safetensors.
# 2. Zero-shot at 1x, 2x, 3x, 4x the training grid (256/512/768/1024 px) on every DUTS-TE image and
#    the held-out part of Kvasir-SEG (:split=test, never trained on), one interior point (the pixel
#    farthest from the mask boundary): vanilla, nsf, basam with each distance; then the variants
#    beta 0.1 / 0.3 / 1, NSF counting rule row / image, NSF on the decoder on / off.
# 3. Fine-tuned as the paper does: at the larger resolution (512 px, 2x), the slopes alone and the
#    slopes with the decoder; evaluated as in 2.
# 4. HQ-SAM's output fusion (independent / add / product): an HQ variant of the study model (HQ-SAM's
#    decoder on it, --architecture '{"hq": true}'), its HQ modules trained on the frozen model as
#    HQ-SAM is trained, once per fusion mode; evaluated as in 2 and compared image by image with
#    the plain model and with each other (scripts/compare_runs.py: hq_fusion*.md).
# Every evaluate folder holds summary.md / summary.json with the paired differences (each preset
# minus vanilla, each size minus 256 px) and their 95 % bootstrap intervals over images, and a plot
# per dataset with those intervals (plot_<dataset>_paired.png).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-full}
OUT=${OUT:-runs/study_v2}
DEVICE=${DEVICE:-cpu}
B=${BASAM:-.venv/bin/basam}
SHARED=${SHARED:-../shared/data}
EVAL_DATA="--data $SHARED/duts-te --data $SHARED/kvasir-seg:split=test"
if [ "$MODE" = quick ]; then  # DUTS-TE only, two images, two steps: minutes, for CI
  RES="256 512"; LIMIT="--max-images 2"; STEPS=2; FT_STEPS=2; HQ_STEPS=2; BATCH=2; VAL="--eval-every 0 --val-max-images 2"
  EVAL_DATA="--data $SHARED/duts-te"
elif [ "$MODE" = full ]; then
  RES="256 512 768 1024"; LIMIT=""; STEPS=6000; FT_STEPS=${FT_STEPS:-600}; HQ_STEPS=${HQ_STEPS:-1500}; BATCH=16; VAL=""
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
  $B train --recipe basam_tiny_v2 --steps "$STEPS" --batch-size "$BATCH" $VAL \
    --cache-dir "$OUT/cache" --device "$DEVICE" --out "$OUT/study_model" --resume $Q
  CKPT=$(last_checkpoint "$OUT/study_model")
fi
[ -f "$CKPT" ] || { echo "study.sh: no study model at $CKPT" >&2; exit 1; }

evaluate() {  # evaluate NAME CHECKPOINT [extra evaluate flags...]
  local name=$1 ckpt=$2; shift 2
  $B evaluate $EVAL_DATA --model basam_tiny --checkpoint "$ckpt" --resolutions $RES --prompt center $LIMIT \
    --device "$DEVICE" --out "$OUT/$name" $Q "$@"
}

train_from_study_model() {  # train_from_study_model NAME [extra train flags...]: on the study model's data, whole images
  local name=$1; shift
  $B train --model basam_tiny --checkpoint "$CKPT" --data "$SHARED/duts-tr" --data "$SHARED/kvasir-seg:split=train" \
    --crop-scale 1.0,1.0 --prompt mixed --batch-size "$BATCH" $VAL --cache-dir "$OUT/cache" --device "$DEVICE" \
    --out "$OUT/$name" --resume $Q "$@"
}

# 2. Zero-shot: the presets, then one knob at a time (vanilla first in each: the paired reference).
evaluate zero_shot "$CKPT" --attention vanilla nsf basam:manhattan basam:euclidean basam:flat --beta 1.0
for beta in 0.1 0.3; do
  evaluate "zero_shot_beta_$beta" "$CKPT" --attention vanilla basam --beta "$beta"
done
evaluate zero_shot_nsf_image "$CKPT" --attention vanilla nsf basam --beta 1.0 --nsf-count image
evaluate zero_shot_decoder_nsf "$CKPT" --attention vanilla nsf basam --beta 1.0 --decoder-nsf

# 3. Fine-tuned at 2x the training grid: the slopes, then the slopes with the decoder.
for policy in slopes decoder+slopes; do
  tag=${policy//+/_}
  train_from_study_model "ft_$tag" --attention basam --beta 0.1 --train "$policy" --resolution 512 \
    --steps "$FT_STEPS" --lr 2e-3 --warmup 1 --weight-decay 0
  evaluate "fine_tuned_$tag" "$(last_checkpoint "$OUT/ft_$tag")" --attention vanilla basam
done
# 4. HQ-SAM's fusion modes on the study model: its HQ modules trained at 256 px, everything else frozen.
HQ_RUNS=()
for fusion in independent add product; do
  train_from_study_model "hq_train_$fusion" --architecture '{"hq": true}' --train hq --hq-fusion "$fusion" \
    --resolution 256 --steps "$HQ_STEPS" --lr 1e-3 --warmup 50
  evaluate "hq_$fusion" "$(last_checkpoint "$OUT/hq_train_$fusion")" --attention vanilla basam:manhattan --beta 1.0  # as zero_shot
  HQ_RUNS+=("$fusion=$OUT/hq_$fusion")
done
PY=${PYTHON:-.venv/bin/python}
$PY scripts/compare_runs.py --reference "$OUT/zero_shot" --reference-name "the plain study model" "${HQ_RUNS[@]}" \
  --out "$OUT/hq_fusion_vs_plain.md" > /dev/null
$PY scripts/compare_runs.py --reference "$OUT/hq_independent" --reference-name "HQ independent" "${HQ_RUNS[@]:1}" \
  --out "$OUT/hq_fusion_vs_independent.md" > /dev/null
echo "study.sh ($MODE): results in $OUT/*/summary.md and $OUT/hq_fusion_*.md"
