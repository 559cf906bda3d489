#!/usr/bin/env bash
# The GPU benchmarks in one scripted run, for a machine with CUDA where torch, transformers and
# lightning are installed (diffusers may come as a wheel): each writes
# benchmarks/results/<name>_cuda.json; the CUDA tests run last. A failing step is reported and
# the others still run; the exit status counts the failures.
# Usage: bash benchmarks/run_gpu.sh [python]   (run from anywhere; default python3)
cd "$(dirname "$0")/.." || exit 1
PY=${1:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
failures=0
step() { echo "== $*"; "$@" || { echo "FAILED: $*"; failures=$((failures + 1)); }; }
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
step "$PY" benchmarks/bench_sampling.py --device cuda --dtype bfloat16
step "$PY" benchmarks/bench_train_speed.py --device cuda --dim 512 --width 2048 --depth 6 \
    --batch 4096 --steps 50 --paper-steps 5
step "$PY" benchmarks/bench_embed.py --n 8192 --device cuda --workers 16 --batch-size 512 \
    --dtype float16
step "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_samplers.py
exit "$failures"
