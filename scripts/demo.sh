#!/usr/bin/env bash
# The main job: set up, then segment examples/shapes.png from one point at 1024 and 2048 px with
# BA-SAM attention, writing masks and overlays to out/. Uses the official MobileSAM weights
# (downloaded once, 40 MB, SHA-256 checked); offline, pass CHECKPOINT=/path/to/mobile_sam.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
for R in 1024 2048; do
  .venv/bin/basam segment examples/shapes.png --point 330,410 --box 170,250,490,570 \
    --model mobile_sam ${CHECKPOINT:+--checkpoint "$CHECKPOINT"} --resolution "$R" --attention basam \
    --out "out/shapes_${R}_mask.png" --overlay "out/shapes_${R}_overlay.png"
done
echo "overlays written to out/"
