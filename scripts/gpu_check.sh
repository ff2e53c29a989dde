#!/usr/bin/env bash
# GPU checks for one CUDA device, in under 8 minutes on an H200: exact Dr²Net backprop reconstructs bitwise on CUDA
# with deterministic algorithms (ViT-S and Video Swin-T, 16×224², float32 and bf16 autocast, several (α, β)), and
# torch.cuda.max_memory_allocated for each training mode at 16×224², and revtal plan's predictions against the GPU's
# peaks (plan_gpu_check.json beside OUT). Writes one JSON (default runs/gpu_check.json);
# without CUDA it writes status "no_cuda" and exits 0. Exit status 1: a deterministic exact check was not bitwise.
#   scripts/gpu_check.sh [OUT.json]        (PYTHON=... to choose the interpreter)
# scripts/gpu_bench_clips.sh (the multi-clip TAL-step peaks) is sourced and run after it with GPU_CHECK_CLIPS=1; it
# has its own budget of about 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check.json}
python=${PYTHON:-python}
# cuBLAS needs a fixed workspace for deterministic results; it must be set before CUDA starts
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
"$python" -m revtal.commands.gpu_check --out "$out"
# revtal plan's prediction (fake tensors, CUDA rules) beside torch.cuda.max_memory_allocated of the same two training
# steps, for three recipes scaled to fit one GPU (tiny CPU recipe; Video Swin-T ANet and ViT-B THUMOS LoSA at 64
# frames, batch 1): docs/SCALE.md records the ratios
"$python" -m revtal.commands.plan_gpu_check --out "$(dirname "$out")/plan_gpu_check.json"
if [[ "${GPU_CHECK_CLIPS:-0}" == 1 ]]; then
    source scripts/gpu_bench_clips.sh
    PYTHON=$python gpu_bench_clips "$(dirname "$out")/gpu_bench"
fi
