#!/usr/bin/env bash
# Set up .venv with the test dependencies, then run the test suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
