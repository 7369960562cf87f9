#!/usr/bin/env bash
# The GPU measurements behind docs/performance.md, in one go (run from the repository root on a
# CUDA machine that already has torch + triton; the official packages come as wheels in .whl/ or
# from pip). Everything is written under ${OUT:-out/gpu}; the last lines printed are the tables.
#
#   STEPS="tests kernel encoder" bash scripts/gpu_bench.sh
#
# STEPS picks what runs: tests (the kernel's GPU correctness tests), kernel (scripts/bench_attention.py),
# encoder (basam bench: ViT-B 1024/2048/4096, ViT-H 2048, MobileSAM 1024, with the official baseline),
# compile (the same with torch.compile), predictor (encode + one prompt, 1024 and 2048).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
STEPS=${STEPS:-"tests kernel encoder predictor"}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
BENCH="python3 -m basam bench -q"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/log.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/log.txt"

for step in $STEPS; do
  echo "=== $step $(date +%T)"
  case $step in
    tests)
      timeout ${T_TESTS:-300} python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels.py tests/test_cuda_graph.py \
        -k "TestGPU or graph or pos_embed" 2>&1 | tail -n 30 | tee -a "$OUT/log.txt" ;;
    kernel)
      timeout ${T_KERNEL:-300} python3 scripts/bench_attention.py --grids ${KERNEL_GRIDS:-64 128 256} --dims 64 --variants ${KERNEL_VARIANTS:-plain rel rel+manhattan rel+euclidean rel+flat} --backward ${KERNEL_BWD:-64 128} --json "$OUT/attention.json" 2>&1 | tee -a "$OUT/log.txt" | tail -n 25
      timeout ${T_KERNEL80:-120} python3 scripts/bench_attention.py --grids 128 --heads 16 --dims 80 --variants rel rel+manhattan --backward ${KERNEL80_BWD:-128} \
        2>&1 | tee -a "$OUT/log.txt" | tail -n 6 ;;
    encoder)
      timeout ${T_VITB:-240} $BENCH --model sam_vit_b --resolution 1024 2048 4096 --dtype bf16 --baseline official --cuda-graph both \
        --json "$OUT/vit_b.json" --plot "$OUT/vit_b.png" 2>&1 | tee -a "$OUT/log.txt"
      [ "${ENCODER_ONLY_B:-0}" = 1 ] && continue
      timeout ${T_VITH:-240} $BENCH --model sam_vit_h --resolution 1024 2048 --dtype bf16 --baseline official --cuda-graph on \
        --json "$OUT/vit_h.json" 2>&1 | tee -a "$OUT/log.txt"
      timeout ${T_MOBILE:-120} $BENCH --model mobile_sam --resolution ${MOBILE_RES:-1024 2048} --dtype fp32 bf16 --baseline official --cuda-graph both \
        --json "$OUT/mobile_sam.json" 2>&1 | tee -a "$OUT/log.txt" ;;
    autocast)
      timeout 240 $BENCH --model sam_vit_b --resolution 1024 2048 --dtype bf16 --autocast --baseline official \
        --json "$OUT/vit_b_autocast.json" 2>&1 | tee -a "$OUT/log.txt" ;;
    compile)
      timeout 400 $BENCH --model sam_vit_b --resolution 1024 2048 --dtype bf16 --compile on --attention vanilla basam \
        --json "$OUT/vit_b_compile.json" 2>&1 | tee -a "$OUT/log.txt" ;;
    predictor)
      timeout ${T_PRED:-200} $BENCH --model sam_vit_b --part predictor --resolution 1024 2048 --dtype bf16 --attention basam --cuda-graph both \
        --baseline official --json "$OUT/predictor.json" 2>&1 | tee -a "$OUT/log.txt" ;;
  esac
done
echo "=== done $(date +%T)"
