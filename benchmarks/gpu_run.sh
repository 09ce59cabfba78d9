#!/usr/bin/env bash
# Device command for benchmarks/gpu.py (issue 5, section 4): ONE run on a lent GPU.
#
# Lead engineer, pass to the device `run` tool:
#   command:   bash benchmarks/gpu_run.sh
#   carry:     [".whl"]      (monai-1.6.1 and nibabel-5.4.2 wheels, ~5 MB; the device image lacks both)
#   timeout_s: 380           (the script stops itself at --budget-s 330, plus at most one
#                             validation or timed pass; JSON is written after every phase)
# Results come back as $OUT/gpu_results.json (rewritten after every phase, so a cut-short
# run still returns figures), $OUT/gpu_log.txt and $OUT/nvidia_smi.txt.
# Data: the 24 hippocampus cases bundled in segfuse/sample/hippocampus (tracked, they travel).
# SimpleITK (264 MB) is not carried: gpu.py puts an empty stand-in in sys.modules when the
# import fails (see its docstring); nothing it runs reads a SimpleITK format.
set -o pipefail
cd "$(dirname "$0")/.." || exit 3
OUT="${OUT:-/tmp/segfuse_gpu_out}"
mkdir -p "$OUT"
nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1 || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/monai-1.6.1-py3-none-any.whl .whl/nibabel-5.4.2-py3-none-any.whl || exit 3
export PYTHONPATH="/tmp/site:$PWD"
PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --device cuda --out "$OUT/gpu_results.json" --budget-s 330 "$@" 2>&1 \
    | tee "$OUT/gpu_log.txt"
