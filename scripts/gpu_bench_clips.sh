#!/usr/bin/env bash
# CUDA peaks for docs/BENCHMARKS.md tables (a) one clip at 16×224² and (b) a TAL step of 8, 16 and 32 clips, on one
# GPU. Defines gpu_bench_clips OUT_DIR (for scripts/gpu_check.sh to source and call); run directly, it calls it.
# Every configuration is a fresh worker process (CUDA context start included); budgeted for < 8 minutes on an H200.
set -euo pipefail

gpu_bench_clips() {
    local out=${1:?output directory}
    local python=${PYTHON:-python}
    local modes=(conventional checkpoint re2 dr2net_float dr2net_exact revlib memcnn)
    mkdir -p "$out"
    # (a) one clip, realistic size (peers are skipped for Swin: they wrap ViT blocks only)
    "$python" -m revtal bench memory --device cuda --models vit_s_video vit_b_video swin3d_t --frames 16 \
        --img-sizes 224 --clips 1 --modes "${modes[@]}" --warmup 2 --repeats 3 --timeout 300 --no-progress \
        --json "$out/gpu_one_clip.json"
    # (b) a TAL step: 8, 16, 32 clips of 16 × 160² through ViT-S, one clip per backbone call
    "$python" -m revtal bench memory --device cuda --models vit_s_video --frames 16 --img-sizes 160 \
        --clips 8 16 32 --modes "${modes[@]}" --warmup 2 --repeats 3 --timeout 300 --no-progress \
        --json "$out/gpu_clips.json"
    "$python" -m revtal bench report --inputs "$out/gpu_one_clip.json" "$out/gpu_clips.json" \
        --json "$out/gpu_bench.json" --plot "$out/figures"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    gpu_bench_clips "${1:-${OUT:-runs/gpu_bench}}"
fi
