#!/usr/bin/env bash
# Device command for benchmarks/brats_fusion.py --gpu (issue 12 §3): the three key variants
# (primary only, early fusion with the 2x2x4 mm auxiliaries upsampled, and the study's chosen default,
# segfuse_pyramid_linear, with them at native resolution; in 3D its network is the pyramid design)
# of task B (T1ce + FLAIR + T2, three BraTS regions) in 3D at 128^3, fold 0 (10 subjects
# train, 3 evaluated), on CUDA; reports Dice per region, seconds per iteration and GPU memory.
#
# Prepare here first (the device has no ../shared/data), then pass to the device `run` tool:
#   python benchmarks/brats_fusion.py --gpu --prepare-only --data-dir gpu_data   # ~45 MB, int16 copies
#   command:   bash benchmarks/brats_fusion_gpu.sh
#   carry:     ["gpu_data", ".whl"]   (.whl: monai and nibabel wheels, as benchmarks/gpu_run.sh; 64 MiB in all)
#   timeout_s: 600                     (3 runs x 2 min of optimisation, plus prediction of 3 subjects each)
# Results: $OUT/brats_gpu/results.json and results.md, $OUT/brats_gpu_log.txt, $OUT/nvidia_smi.txt.
set -o pipefail
cd "$(dirname "$0")/.." || exit 3
OUT="${OUT:-/tmp/segfuse_brats_gpu_out}"
mkdir -p "$OUT"
nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1 || true
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 3
fi
export PYTHONPATH="/tmp/site:$PWD"
PYTHONUNBUFFERED=1 python3 benchmarks/brats_fusion.py --gpu --default segfuse_pyramid_linear --data-dir gpu_data --minutes 2 \
    --out "$OUT/brats_gpu_runs" "$@" 2>&1 | tee "$OUT/brats_gpu_log.txt"
mkdir -p "$OUT/brats_gpu" && cp "$OUT"/brats_gpu_runs/gpu/results.* "$OUT/brats_gpu/" 2>/dev/null
rm -rf "$OUT/brats_gpu_runs"
