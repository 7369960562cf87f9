#!/usr/bin/env bash
# Create .venv (once) and install basam into it. EXTRAS=test also installs the test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned to a release that pip can take from a local wheel cache where one exists.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"
# The SAM 2 parity oracle (official sam2, test only), without its CUDA extension. Not a pyproject
# extra: it must be built with SAM2_BUILD_CUDA=0. Its tests skip with the reason if this fails.
if [[ ",${EXTRAS:-}," == *",test,"* ]] && ! .venv/bin/python -c "import sam2" 2>/dev/null; then
  (SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation "sam2==1.1.0" \
    || SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install -q --disable-pip-version-check "sam2==1.1.0") >/dev/null 2>&1 \
    || echo "setup: the sam2 oracle could not be installed; tests/test_sam2.py will skip its parity tests" >&2
fi
