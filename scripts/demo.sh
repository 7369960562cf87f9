#!/usr/bin/env bash
# The main job: set up, then segment examples/shapes.png from one point with the bundled
# basam_tiny model (offline) at its training resolution (256 px) and at 1024 px with BA-SAM
# attention; masks and overlays go to out/. It writes the three candidate masks: basam_tiny was
# trained with single points, so only SAM's multimask tokens learned (its single-mask token did not). MODEL=mobile_sam uses the official MobileSAM weights
# instead (downloaded once; CHECKPOINT=/path/to/mobile_sam.pt offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
MODEL=${MODEL:-basam_tiny}
for R in 256 1024; do
  .venv/bin/basam segment examples/shapes.png --point 330,410 --multimask \
    --model "$MODEL" ${CHECKPOINT:+--checkpoint "$CHECKPOINT"} --resolution "$R" --attention basam \
    --out "out/shapes_${R}_mask.png" --overlay "out/shapes_${R}_overlay.png"
done
echo "overlays written to out/shapes_256_overlay.png and out/shapes_1024_overlay.png (masks: out/shapes_*_mask_0..2.png)"
