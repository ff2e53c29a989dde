"""State dicts with the key names and shapes that public code bases publish, made in the test: distinct values per
key (seeded by its name), or meta tensors (``meta=True``: names and shapes of a full-size model without memory)."""

from __future__ import annotations

import zlib

import torch


def distinct(shape, key: str, meta: bool = False) -> torch.Tensor:
    """Values unique to ``key`` (seeded by its name), so a tensor loaded in the wrong place is caught."""
    if meta:
        return torch.empty(shape, device="meta")
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.randn(shape, generator=generator)


def official_relative_position_index(wd, wh, ww) -> torch.Tensor:
    """The buffer as Video-Swin-Transformer computes it: offsets shifted to start at 0, then flattened with the
    temporal offset slowest."""
    coords = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + torch.tensor([wd - 1, wh - 1, ww - 1])
    return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


def official_video_swin(embed_dim, depths, num_heads, window=(8, 7, 7), temporal_patch=2, image=False,
                        final_norm="norm", meta=False) -> dict:
    """Key names and shapes of SwinTransformer3D (Video-Swin-Transformer), or of the 2-D ImageNet Swin
    (``image=True``: 2-D patch kernel and tables, attn_mask buffers in shifted blocks, an ImageNet head)."""
    sd = {}
    kernel = (embed_dim, 3, 4, 4) if image else (embed_dim, 3, temporal_patch, 4, 4)
    sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"] = kernel, (embed_dim,)
    sd["patch_embed.norm.weight"] = sd["patch_embed.norm.bias"] = (embed_dim,)
    wd, wh, ww = (1, window[1], window[2]) if image else window
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim = embed_dim * 2 ** i
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            sd[b + "norm1.weight"] = sd[b + "norm1.bias"] = sd[b + "norm2.weight"] = sd[b + "norm2.bias"] = (dim,)
            rows = (2 * wh - 1) * (2 * ww - 1) * (1 if image else 2 * wd - 1)
            sd[b + "attn.relative_position_bias_table"] = (rows, heads)
            sd[b + "attn.relative_position_index"] = "index"
            sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = (3 * dim, dim), (3 * dim,)
            sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = (dim, dim), (dim,)
            sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = (4 * dim, dim), (4 * dim,)
            sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = (dim, 4 * dim), (dim,)
            if image and j % 2:
                sd[b + "attn_mask"] = "mask"
        if i < len(depths) - 1:
            sd[f"layers.{i}.downsample.reduction.weight"] = (2 * dim, 4 * dim)
            sd[f"layers.{i}.downsample.norm.weight"] = sd[f"layers.{i}.downsample.norm.bias"] = (4 * dim,)
    dim = embed_dim * 2 ** (len(depths) - 1)
    sd[f"{final_norm}.weight"] = sd[f"{final_norm}.bias"] = (dim,)
    if image:
        sd["head.weight"], sd["head.bias"] = (1000, dim), (1000,)
    index = official_relative_position_index(wd, wh, ww)
    return {k: index.clone() if s == "index" else torch.zeros(4, wh * ww, wh * ww) if s == "mask"
            else distinct(s, k, meta) for k, s in sd.items()}


def official_slowfast_name(key: str) -> str | None:
    """The facebookresearch/SlowFast name of a pytorchvideo create_slowfast key (None: the head), written from
    SlowFast's model code: s1 = stems, s{k}_fuse after stage k (k = 1..4), s2..s5 = res stages."""
    parts = key.split(".")
    block = int(parts[1])
    if block == 6:
        return None
    if parts[2] == "multipathway_fusion":
        layer = {"conv_fast_to_slow": "conv_f2s", "norm": "bn"}[parts[3]]
        return f"s{block + 1}_fuse.{layer}.{parts[4]}"
    pathway = parts[3]
    if block == 0:
        return f"s1.pathway{pathway}_stem.{ {'conv': 'conv', 'norm': 'bn'}[parts[4]] }.{parts[5]}"
    prefix = f"s{block + 1}.pathway{pathway}_res{parts[5]}."
    if parts[6] in ("branch1_conv", "branch1_norm"):
        return prefix + {"branch1_conv": "branch1", "branch1_norm": "branch1_bn"}[parts[6]] + "." + parts[7]
    layer, branch = parts[7].split("_")  # conv_a / norm_b
    return prefix + f"branch2.{branch}{'_bn' if layer == 'norm' else ''}.{parts[8]}"


def caffe2_name(official: str) -> str:
    """The Caffe2 blob name of a facebookresearch SlowFast name, as in the c2 model zoo .pkl files."""
    param = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}  # of a BatchNorm
    stem, _, leaf = official.rpartition(".")
    if stem.startswith("s1.pathway"):
        fast = "t_" if stem[10] == "1" else ""
        return f"{fast}conv1_w" if stem.endswith("conv") else f"{fast}res_conv1_bn_{param[leaf]}"
    if "_fuse." in stem:
        k = int(stem[1])
        base = "t_pool1_subsample" if k == 1 else f"t_res{k}_{FAST_LAST_BLOCK[k]}_branch2c_bn_subsample"
        return f"{base}_w" if stem.endswith("conv_f2s") else f"{base}_bn_{param[leaf]}"
    stage, path_block, *rest = stem.split(".")
    fast = "t_" if path_block[7] == "1" else ""
    block = path_block.split("_res")[1]
    name = f"{fast}res{stage[1]}_{block}_"
    if rest[0] in ("branch1", "branch1_bn"):
        return name + ("branch1_w" if rest[0] == "branch1" else f"branch1_bn_{param[leaf]}")
    letter = rest[1][0]
    return name + (f"branch2{letter}_w" if rest[1] == letter else f"branch2{letter}_bn_{param[leaf]}")


FAST_LAST_BLOCK = {2: 2, 3: 3, 4: 5}  # R50: 3, 4, 6 blocks in res2..res4


def official_slowfast(backbone, meta=False) -> dict:
    """facebookresearch names of ``backbone``'s network (a pytorchvideo SlowFast), with its shapes."""
    reference = backbone.net.state_dict()
    return {official_slowfast_name(k): distinct(v.shape, k, meta) if v.is_floating_point() else torch.tensor(7)
            for k, v in reference.items() if official_slowfast_name(k)}


def videomae_encoder(dim=32, depth=2, mean_pooling=True, patch=8, meta=False, hidden=None) -> dict:
    """VideoMAE / VideoMAEv2 encoder names: q_bias / v_bias beside a bias-free qkv, fc_norm when pooling by mean;
    ``hidden``: the MLP width (4·dim; ViT-g's 6144)."""
    hidden = hidden or 4 * dim
    sd = {"patch_embed.proj.weight": (dim, 3, 2, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            sd[f"{b}{norm}.weight"] = sd[f"{b}{norm}.bias"] = (dim,)
        sd[b + "attn.qkv.weight"], sd[b + "attn.q_bias"], sd[b + "attn.v_bias"] = (3 * dim, dim), (dim,), (dim,)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = (dim, dim), (dim,)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = (hidden, dim), (hidden,)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = (dim, hidden), (dim,)
    norm = "fc_norm" if mean_pooling else "norm"
    sd[f"{norm}.weight"] = sd[f"{norm}.bias"] = (dim,)
    return {k: distinct(s, k, meta) for k, s in sd.items()}


