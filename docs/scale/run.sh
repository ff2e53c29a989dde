#!/usr/bin/env bash
# The revtal plan runs behind docs/SCALE.md (CPU only; each writes docs/scale/<name>.json). Run from the repo root:
#   bash docs/scale/run.sh [name ...]        (default: all, in this order)
set -euo pipefail
plan() { local name=$1; shift; echo "== $name"; python -m revtal plan "$@" --json "docs/scale/$name.json"; }
ANET=configs/anet_swin3d_t_dr2net.yaml
ALL=(anet_swin3d_t_b1 anet_swin3d_t_b1_wc16 dr2net_ar_vit_s losa_slowfast_r101 losa_vit_b losa_vit_g losa_vit_g14 vitg_dr2net_exact_48
     re2tal_slowfast_r50 re2tal_slowfast_r101
     re2tal_swin3d_s re2tal_swin3d_b re2tal_thumos_swin3d_t recipe_tiny_cpu_dr2net recipe_anet_swin3d_t_dr2net
     recipe_anet_slowfast_r50_re2 recipe_thumos_losa recipe_thumos_re2tal recipe_thumos_vitg_dr2net
     recipe_tiny_cpu_classification recipe_k400_swin3d_t_re2_repretrain
)
SF="--set data.batch_size=1 --set data.num_frames=512 --set data.img_size=224"  # Re²TAL's ANet input
for name in "${@:-${ALL[@]}}"; do
  case $name in
    anet_swin3d_t_b1) plan $name $ANET --set data.batch_size=1 ;;
    # 16 windows per chunk instead of the recipe's 64: stage 3 (12 heads) and 4 (24) hold 4× and 8× stage 1's
    # scores per window
    anet_swin3d_t_b1_wc16) plan $name $ANET --set data.batch_size=1 --set backbone.window_chunk=16 \
        --modes checkpoint re2 ;;
    dr2net_ar_vit_s) plan $name configs/tiny_cpu_dr2net.yaml --set backbone.name=vit_s_video --set 'backbone.options={}' \
        --set data.num_frames=16 --set data.img_size=224 --set data.batch_size=12 --set optim.amp=fp16 \
        --set backbone.losa.clip_frames=16 --classes 174 --modes frozen conventional dr2net:exact ;;
    losa_slowfast_r101) plan $name configs/thumos_losa.yaml --set data.batch_size=1 --set backbone.name=slowfast_r101 \
        --set 'backbone.options={}' --classes 20 --modes frozen conventional losa ;;
    losa_vit_b) plan $name configs/thumos_losa.yaml --set data.batch_size=1 --classes 20 --modes frozen conventional losa ;;
    # LoSA's backbone is VideoMAEv2 ViT-g/14 (14×14 patches, as configs/thumos_vitg_dr2net.yaml)
    losa_vit_g) plan $name configs/thumos_losa.yaml --set data.batch_size=1 --set backbone.name=vit_g_video \
        --set backbone.options.patch_size=14 --classes 20 --modes frozen conventional losa ;;
    losa_vit_g14) plan $name configs/thumos_losa.yaml --set data.batch_size=1 --set backbone.name=vit_g_video \
        --set backbone.options.patch_size=14 --classes 20 --modes losa ;;  # losa alone: the issue-25 figure
    vitg_dr2net_exact_48) plan $name configs/thumos_vitg_dr2net.yaml --modes dr2net:exact --jobs 1 ;;  # 48 clips
    re2tal_slowfast_r50) plan $name configs/anet_slowfast_r50_re2.yaml $SF --modes conventional re2 ;;
    re2tal_slowfast_r101) plan $name configs/anet_slowfast_r50_re2.yaml $SF --set backbone.name=slowfast_r101 \
        --modes conventional re2 ;;
    re2tal_thumos_swin3d_t) plan $name configs/thumos_re2tal.yaml --set data.batch_size=1 --set data.img_size=224 \
        --modes conventional re2 ;;
    re2tal_swin3d_s) plan $name $ANET --set data.batch_size=1 --set backbone.name=swin3d_s --modes conventional re2 ;;
    re2tal_swin3d_b) plan $name $ANET --set data.batch_size=1 --set backbone.name=swin3d_b --modes conventional re2 ;;
    # Kinetics-400's classes are in its clip lists, which plan does not read
    recipe_k400_swin3d_t_re2_repretrain) plan $name configs/${name#recipe_}.yaml --classes 400 ;;
    # ViT-g over 48 clips costs ~8 CPU-minutes of fake-tensor dispatch per mode: three modes here, the recipe's own
    # (dr2net:exact) in vitg_dr2net_exact_48; the adapter modes cut clips themselves and need data.mode: frames
    recipe_thumos_vitg_dr2net) plan $name configs/${name#recipe_}.yaml --modes frozen conventional re2 ;;
    recipe_*) plan $name configs/${name#recipe_}.yaml ;;
    *) echo "unknown run $name" >&2; exit 2 ;;
  esac
done
