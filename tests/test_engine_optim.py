"""Weight-decay groups: matrices and kernels decay; norms, biases, LayerScale and position embeddings do not."""

import torch
from torch import nn

from revtal.engine.optim import build_optimizer, decay_groups
from revtal.localizers.actionformer import ActionFormer, ActionFormerConfig


def _names(module, params):
    ids = {id(p) for p in params}
    return {n for n, p in module.named_parameters() if id(p) in ids}


def test_localizer_decays_only_conv_kernels():
    model = ActionFormer(8, 3, ActionFormerConfig(embed_dim=16, head_dim=16, num_heads=2, num_branch_blocks=1,
                                                  regression_ranges=((0, 4), (4, float("inf")))))
    decayed, kept = decay_groups(model)
    decayed_names, kept_names = _names(model, decayed), _names(model, kept)
    assert decayed_names | kept_names == {n for n, _ in model.named_parameters()} and not decayed_names & kept_names
    assert "stem.0.attn.query.weight" in decayed_names and "stem.0.mlp.0.weight" in decayed_names
    assert "embed_convs.0.conv.weight" in decayed_names
    # channel-first LayerNorm and LayerScale hold (1, C, 1) parameters: shaped like matrices, never decayed
    for name in ("stem.0.norm_attn.weight", "stem.0.norm_attn.bias", "neck_norms.0.weight", "stem.0.scale_attn.scale",
                 "reg_scales", "cls_head.output.conv.bias", "stem.0.attn.query.bias"):
        assert name in kept_names, name
    assert all(name.endswith("weight") and "norm" not in name for name in decayed_names)


def test_backbone_embeddings_and_norms_are_not_decayed_and_groups_carry_the_rates():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.proj = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)
            self.bn = nn.BatchNorm3d(8)
            self.frozen = nn.Linear(8, 8).requires_grad_(False)

    backbone = Tiny()
    decayed, kept = decay_groups(backbone)
    assert _names(backbone, decayed) == {"proj.weight"}
    assert _names(backbone, kept) == {"pos_embed", "cls_token", "proj.bias", "norm.weight", "norm.bias", "bn.weight", "bn.bias"}
    head = nn.Conv1d(8, 2, 3)
    optimizer = build_optimizer(backbone, head, backbone_lr=1e-5, head_lr=1e-4, weight_decay=0.05)
    groups = {g["name"]: (g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups}
    assert groups == {"backbone": (1e-5, 0.05, 1), "backbone_no_decay": (1e-5, 0.0, 7),
                      "head": (1e-4, 0.05, 1), "head_no_decay": (1e-4, 0.0, 1)}


def test_layer_decay_scales_each_block_by_its_depth():
    from revtal.backbones import build
    from revtal.engine.optim import build_optimizer, layer_ids

    backbone = build("vit_tiny_video", num_frames=4, img_size=32, depth=3)
    depth, blocks = layer_ids(backbone)
    named = dict(backbone.named_parameters())
    assert blocks == 3 and depth[id(named["net.patch_embed.proj.weight"])] == 0
    assert depth[id(named["net.blocks.1.mlp.fc1.weight"])] == 2 and depth[id(named["net.fc_norm.weight"])] == 4
    head = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(backbone, head, 1.0, 5.0, 0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(named["net.patch_embed.proj.weight"])] == 0.5 ** 4
    assert lr_of[id(named["net.blocks.0.attn.qkv.weight"])] == 0.5 ** 3
    assert lr_of[id(named["net.blocks.2.norm1.weight"])] == 0.5
    assert lr_of[id(named["net.fc_norm.weight"])] == 1.0 and lr_of[id(head.weight)] == 5.0
    wd_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert wd_of[id(named["net.blocks.0.attn.qkv.weight"])] == 0.05 and wd_of[id(named["net.blocks.0.norm1.weight"])] == 0.0


def test_layer_decay_puts_swin_patch_merging_with_the_block_before():
    from revtal.backbones import build
    from revtal.engine.optim import layer_ids

    backbone = build("swin3d_t", num_frames=4, img_size=64)
    depth, blocks = layer_ids(backbone)
    named = dict(backbone.named_parameters())
    assert blocks == 12
    assert depth[id(named["net.features.1.reduction.weight"])] == depth[id(named["net.features.0.1.mlp.0.weight"])] == 2
    assert depth[id(named["net.norm.weight"])] == 13


def test_fused_adamw_step_holds_no_temporary_the_size_of_all_parameters():
    from tests.helpers import live_peak_bytes

    torch.manual_seed(0)
    backbone, head = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(8)]), torch.nn.Linear(64, 4)
    total = sum(p.numel() * p.element_size() for p in [*backbone.parameters(), *head.parameters()])
    peaks = []
    for optimizer in (
        build_optimizer(backbone, head, 1e-3, 1e-3, 0.05, fused=True),
        # CUDA's default AdamW implementation (foreach): every update at once
        torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), foreach=True),
    ):
        for _ in range(2):  # the first step creates the state; the second is the steady one
            for p in [*backbone.parameters(), *head.parameters()]:
                p.grad = torch.randn_like(p)
            peak = live_peak_bytes(optimizer.step)
        peaks.append(peak)
    fused, foreach = peaks
    assert foreach >= total and fused <= 0.1 * total, (fused, foreach, total)


def test_recipe_optimizer_honours_every_optim_option_layer_decay_and_fused_included():
    # the TAL trainer ignored optim.layer_decay and the classification trainer optim.fused (revtal plan honoured
    # both, so it simulated another optimizer than the trainer ran); both now go through recipe_optimizer
    from revtal.engine.config import config_from_dict
    from revtal.engine.optim import recipe_optimizer

    optim = config_from_dict({"optim": {"layer_decay": 0.5, "fused": True, "backbone_lr": 1.0, "head_lr": 5.0}},
                             source="test").optim
    backbone, head = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), nn.Linear(4, 2)
    optimizer = recipe_optimizer(backbone, head, optim)
    assert optimizer.defaults["fused"] is True
    assert any(g["name"].startswith("backbone_layer") for g in optimizer.param_groups)
    assert {g["lr"] for g in optimizer.param_groups if g["name"].startswith("head")} == {5.0}
