#!/usr/bin/env bash
# The paper's claim in miniature (issue 4): basam_tiny, trained at 256 px, evaluated zero-shot at
# 256/512/1024 under vanilla, nsf and basam with each distance; then its BM-AM slopes fine-tuned at
# 256 px and evaluated again. Writes to $OUT (default runs/study); docs/results/ holds a copy.
#   N=50 bash scripts/study.sh          # N images per dataset
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-50}
OUT=${OUT:-runs/study}
STEPS=${STEPS:-150}
DATA="--data ../shared/data/duts-te --data ../shared/data/kvasir-seg"
B=.venv/bin/basam
WEIGHTS=src/basam/weights/basam_tiny.safetensors
mkdir -p "$OUT"

# 1. Zero-shot (Tables 1 and 4, zero-shot rows).
/usr/bin/time -f "zero-shot evaluation: %e s" $B evaluate $DATA --model basam_tiny --resolutions 256 512 1024 \
  --attention vanilla nsf basam:manhattan basam:euclidean basam:flat --prompt point --max-images "$N" --device cpu \
  --out "$OUT/zero_shot" -q > "$OUT/zero_shot.log"

# 2. Fine-tune only the slopes (per layer, per head), beta 0.1 to start, at the training resolution.
/usr/bin/time -f "slope fine-tuning: %e s" $B train --model basam_tiny --checkpoint "$WEIGHTS" --attention basam --beta 0.1 \
  --train slopes --data ../shared/data/duts-tr --resolution 256 --prompt point --steps "$STEPS" --batch-size 16 \
  --lr 5e-3 --min-lr 1e-4 --warmup 10 --weight-decay 0 --eval-every 100000 --save-every "$STEPS" --log-every 10 \
  --num-workers 1 --device cpu --out "$OUT/slopes" -q > "$OUT/slopes.log"

# 3. The fine-tuned slopes, evaluated as in 1 (Table 4, fine-tuned rows). vanilla and nsf do not use
#    the slopes, so their fine-tuned rows equal the zero-shot ones; only basam is evaluated again.
/usr/bin/time -f "fine-tuned evaluation: %e s" $B evaluate $DATA --model basam_tiny \
  --checkpoint "$OUT/slopes/checkpoints/step_$STEPS/model.safetensors" --resolutions 256 512 1024 \
  --attention basam --prompt point --max-images "$N" --device cpu --out "$OUT/fine_tuned" -q > "$OUT/fine_tuned.log"
echo "done: $OUT/zero_shot/summary.md, $OUT/fine_tuned/summary.md"
