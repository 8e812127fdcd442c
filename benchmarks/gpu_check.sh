#!/usr/bin/env bash
# The GPU check of the scale-up issue: dmdb fit at n=100k / N=10k / M=1k, the cifar10
# recipe for 2 epochs, and the MLP trainer, each timed; one line per figure.
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--tiny]
#
# Default: --device cuda at full size (under 8 minutes on one GPU). --device cpu --tiny
# runs the same code at tiny sizes in seconds. PYTHON=... picks the interpreter
# (default: python). See benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
