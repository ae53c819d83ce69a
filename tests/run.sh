#!/usr/bin/env bash
# The test command: sets up .venv and the Fashion-MNIST data itself, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash run.sh --setup
# One thread: Paddle's CPU results are bit-identical run to run only at a fixed thread count.
export OMP_NUM_THREADS=1
.venv/bin/python -m track1 prepare
.venv/bin/python -m pytest tests -q "$@"
