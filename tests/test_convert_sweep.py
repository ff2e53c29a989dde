"""Registry sweep: every supported family, built by its library's real constructor at a tiny size, converts and
keeps its promises — bitwise the original network at (α=1, β=0) in float32 (outputs and gradients), state_dict
keys unchanged and original weights loading strictly, reversible vs vanilla float64 gradient parity ≤ 1e-10 at
Re²TAL's point (0, 1), exact-arithmetic vs vanilla parity ≤ 1e-5 in float32 at (1, 1/8), and saved bytes not
growing with depth. BatchNorm models run in train mode with a batch of 2."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

import revtal
from revtal.reversible import reversible_stages
from revtal.utils.memory import saved_bytes
from tests.helpers import assert_bitwise_same_network, gradients_per_mode


def gradient_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest per-tensor ‖a − b‖ / ‖b‖; a tensor whose reference gradient is round-off (below 1e-6 of the largest:
    a LayerNorm bias on attention keys, a conv bias before BatchNorm) is measured against that floor."""
    assert len(a) == len(b) > 0
    floor = 1e-6 * max(y.norm().item() for y in b)
    return max(((x - y).norm() / y.norm().clamp_min(floor)).item() for x, y in zip(a, b))


@dataclass
class Case:
    build: Callable[[int], nn.Module]  # depth (blocks per converted stage) -> model
    input: Callable[[], object]
    train: bool = False  # BatchNorm models: train mode, batch > 1
    needs: str = ""  # optional library
    # float32 itself is far from float64 here (tiny random MViTs, a 32-block SlowFast with batch-2 BatchNorm:
    # vanilla float32 gradients are 4e-4..3e-3 off the float64 ones; PoolFormer's norm1 bias, which its token
    # mixer pool(x) − x nearly cancels, 6e-3; MobileNetV2 with batch-2 BatchNorm 6e-4), so exact mode is held to
    # "no worse than twice float32's own error" instead of 1e-5 to vanilla float32
    ill_conditioned: bool = False
    # parameters (by name) that are not part of the network at (α, β) = (0, 1): a learnable shortcut scale S in
    # G_α(x) = F(x) + α·S(x) (timm MetaFormer's res_scale) gets no gradient there
    idle_at_re2: str = ""


def _image(size=16, batch=2):
    return lambda: torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _clip(frames=4, size=16, batch=2):
    return lambda: torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(1))


def _seeded(build):
    def make(depth):
        torch.manual_seed(0)
        return build(depth)
    return make


def _timm(name, **kw):
    def build(depth):
        import timm

        return timm.create_model(name, pretrained=False, num_classes=3, depth=depth, **kw)
    return _seeded(build)


def _timm_resnet(depth):
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, layers=(depth, depth, 1, 1), channels=(8, 16, 16, 16), stem_width=8, num_classes=3)


def _timm_resnetv2(depth):
    from functools import partial

    from timm.layers import GroupNormAct
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(layers=[depth, depth], channels=(16, 32), stem_chs=8, num_classes=3,
                    norm_layer=partial(GroupNormAct, num_groups=4))


def _timm_convnext(depth):
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(depths=(depth, depth, 1, 1), dims=(8, 16, 16, 16), num_classes=3, ls_init_value=0.5)


def _timm_swin_v2(depth):
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    return SwinTransformerV2(img_size=16, patch_size=2, embed_dim=8, depths=(depth,), num_heads=(2,), window_size=4,
                             num_classes=3)


def _timm_swin(depth):
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(img_size=20, patch_size=2, embed_dim=8, depths=(depth,), num_heads=(2,), window_size=4,
                           num_classes=3)


def _timm_mvitv2(depth):
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    cfg = MultiScaleVitCfg(depths=(1, depth), embed_dim=(8, 16), num_heads=(1, 2), stride_q=((1, 1), (2, 2)))
    return MultiScaleVit(cfg, img_size=(32, 32), num_classes=3)


def _tv_vit(depth):
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=16, patch_size=8, num_layers=depth, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=3)
    nn.init.normal_(model.heads.head.weight)  # torchvision zero-initialises the head: no gradient would flow
    return model


def _tv_convnext(depth):
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, depth), CNBlockConfig(16, None, depth)], layer_scale=0.5, num_classes=3)


def _tv_swin(v2: bool):
    def build(depth):
        from torchvision.models import swin_transformer as tv

        extra = {"block": tv.SwinTransformerBlockV2, "downsample_layer": tv.PatchMergingV2} if v2 else {}
        return tv.SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[depth, depth], num_heads=[2, 2],
                                  window_size=[4, 4], num_classes=3, **extra)
    return _seeded(build)


def _tv_video_swin(depth):
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    return SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=8, depths=[depth], num_heads=[2], window_size=[2, 4, 4],
                             num_classes=3)


def _tv_mvit(v2: bool):
    def build(depth):
        from torchvision.models.video.mvit import MSBlockConfig, MViT

        stride_kv = [1, 2, 2]
        blocks = [MSBlockConfig(1, 8, 8 if v2 else 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], stride_kv)]
        blocks += [MSBlockConfig(2, 16, 16, [3, 3, 3], [3, 3, 3], [1, 2, 2] if i == 0 else [1, 1, 1], [1, 1, 1])
                   for i in range(depth)]
        if v2:
            blocks[1] = MSBlockConfig(2, 8, 16, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1])
            blocks.append(MSBlockConfig(2, 16, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 1, 1]))
        return MViT(spatial_size=(16, 16), temporal_size=4, block_setting=blocks, residual_pool=v2,
                    residual_with_cls_embed=not v2, rel_pos_embed=v2, proj_after_attn=v2, dropout=0.0,
                    num_classes=3, patch_embed_kernel=(3, 3, 3), patch_embed_stride=(2, 2, 2),
                    patch_embed_padding=(1, 1, 1))
    return _seeded(build)


def _tv_resnet(depth):
    from torchvision.models.resnet import BasicBlock, Bottleneck

    def layer(block, inplanes, planes, stride):
        down = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                             nn.BatchNorm2d(planes * block.expansion))
        return nn.Sequential(block(inplanes, planes, stride, down),
                             *[block(planes * block.expansion, planes) for _ in range(depth)])

    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer(BasicBlock, 8, 8, 1), layer(Bottleneck, 8, 4, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


def _tv_regnet(depth):
    # regnet_y's block (squeeze-excitation inside F, ReLU after the sum), two stages: first block of each ordinary
    from torchvision.models.regnet import BlockParams, RegNet

    params = BlockParams(depths=[depth, depth], widths=[8, 16], group_widths=[8, 8],
                         bottleneck_multipliers=[1.0, 1.0], strides=[2, 2], se_ratio=0.25)
    return RegNet(params, num_classes=3, stem_width=8)


def _tv_mobilenet_v2(depth):
    # inverted residuals with use_res_connect reversible; the expanding/striding ones and the Conv-BN-ReLU6 layers
    # around them stay ordinary inside the one `features` stage
    from torchvision.models.mobilenetv2 import MobileNetV2

    setting = [[1, 8, 1, 1], [2, 8, depth, 1], [2, 16, depth, 2]]  # expansion t, channels c, blocks n, stride s
    return MobileNetV2(num_classes=3, width_mult=0.25, dropout=0.0, inverted_residual_setting=setting)


def _timm_metaformer(v2: bool):
    # PoolFormer v1 (timm poolformer_s12's settings): res_scale is nn.Identity; v2 (poolformerv2_s12, ConvFormer,
    # CAFormer): a learnable per-channel Scale in stages 3 and 4, drawn away from its init of 1 here so that the
    # α·S(x) skip is really tested
    def build(depth):
        from timm.models import metaformer as mf

        v1 = dict(downsample_norm=None, mlp_act=nn.GELU, mlp_bias=True, norm_layers=mf.GroupNorm1,
                  layer_scale_init_values=1e-5, res_scale_init_values=None)
        model = mf.MetaFormer(depths=(depth,) * 4, dims=(8, 8, 16, 16), num_classes=3, use_mlp_head=False,
                              **({"norm_layers": mf.GroupNorm1NoBias} if v2 else v1))
        for m in model.modules():
            if isinstance(m, mf.Scale):
                nn.init.uniform_(m.scale, 0.5, 1.5)
        return model
    return _seeded(build)


def _slowfast(depth):
    # depth 2 -> R50 (3, 4, 6, 3 blocks per pathway), 4 -> R101 (3, 4, 23, 3); revtal's backbone wrapper: one clip in
    from revtal.backbones import build

    return build({2: "slowfast_r50", 4: "slowfast_r101"}[depth], stem_dim_outs=(8, 1))


class _LastHiddenState(nn.Module):
    """A Hugging Face model returns an output object; the checks need its tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).last_hidden_state


def _hf_videomae(depth):
    import transformers

    config = transformers.VideoMAEConfig(image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=16,
                                         num_hidden_layers=depth, num_attention_heads=2, intermediate_size=32)
    return _LastHiddenState(transformers.VideoMAEModel(config))


CASES = {
    "timm_vit_avg_pool": Case(_timm("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=16, num_heads=2,
                                    class_token=False, global_pool="avg"), _image()),
    "timm_vit_parallel": Case(_timm("vit_small_patch16_18x2_224", img_size=16, patch_size=8, embed_dim=16,
                                    num_heads=2), _image()),
    "timm_vit_respost": Case(_timm("vit_base_patch16_rpn_224", img_size=16, patch_size=8, embed_dim=16, num_heads=2),
                             _image()),
    "timm_eva02": Case(_timm("eva02_tiny_patch14_224", img_size=28, patch_size=14, embed_dim=16, num_heads=2),
                       _image(28)),
    "timm_beit": Case(_timm("beit_base_patch16_224", img_size=16, patch_size=8, embed_dim=16, num_heads=2),
                      _image()),
    "timm_cait": Case(_timm("cait_xxs24_224", img_size=16, patch_size=8, embed_dim=16, num_heads=2,
                            depth_token_only=1), _image()),
    "timm_resnet": Case(_seeded(_timm_resnet), _image(), train=True),
    "timm_resnetv2": Case(_seeded(_timm_resnetv2), _image()),
    "timm_convnext": Case(_seeded(_timm_convnext), _image(32)),
    "timm_swin": Case(_seeded(_timm_swin), _image(20)),
    "timm_swin_v2": Case(_seeded(_timm_swin_v2), _image()),
    "timm_mvitv2": Case(_seeded(_timm_mvitv2), _image(32), ill_conditioned=True),
    "torchvision_resnet": Case(_seeded(_tv_resnet), _image(8), train=True),
    "torchvision_regnet": Case(_seeded(_tv_regnet), _image(), train=True),
    "torchvision_mobilenet_v2": Case(_seeded(_tv_mobilenet_v2), _image(), train=True, ill_conditioned=True),
    "timm_poolformer": Case(_timm_metaformer(v2=False), _image(32), ill_conditioned=True),
    "timm_poolformer_v2": Case(_timm_metaformer(v2=True), _image(32), ill_conditioned=True, idle_at_re2="res_scale"),
    # train mode: in eval, nn.MultiheadAttention takes a fused fast path under no_grad and the slow path with grad,
    # so a memory-free forward and its recompute would compute the branch differently (see docs/CONVERTERS.md)
    "torchvision_vit": Case(_seeded(_tv_vit), _image(), train=True),
    "torchvision_convnext": Case(_seeded(_tv_convnext), _image()),
    "torchvision_swin": Case(_tv_swin(v2=False), _image()),
    "torchvision_swin_v2": Case(_tv_swin(v2=True), _image()),
    "torchvision_video_swin": Case(_seeded(_tv_video_swin), _clip(4, 16, batch=1)),
    "pytorchvideo_slowfast": Case(_seeded(_slowfast), _clip(4, 16), train=True, needs="pytorchvideo",
                                  ill_conditioned=True),
    "transformers_videomae": Case(_seeded(_hf_videomae), lambda: torch.randn(2, 4, 3, 16, 16), needs="transformers"),
    "torchvision_mvit_v1": Case(_tv_mvit(v2=False), _clip(), ill_conditioned=True),
    "torchvision_mvit_v2": Case(_tv_mvit(v2=True), _clip(), ill_conditioned=True),
}


def _prepared(case: Case, depth: int, dtype=torch.float32) -> nn.Module:
    model = case.build(depth).to(dtype)
    return model.train() if case.train else model.eval()


@pytest.mark.parametrize("name", sorted(CASES))
def test_family_converts_bitwise_strictly_and_with_gradient_parity(name):
    case = CASES[name]
    if case.needs:
        pytest.importorskip(case.needs)
    reference = _prepared(case, 2)
    x = case.input()
    converted = revtal.convert(copy.deepcopy(reference), "original")
    assert reversible_stages(converted), name
    assert list(converted.state_dict()) == list(reference.state_dict())
    converted.load_state_dict(reference.state_dict(), strict=True)
    assert_bitwise_same_network(reference, converted, x)

    # float64 gradient parity at Re²TAL's point (0, 1), input gradient included
    reference64 = _prepared(case, 2, torch.float64)
    x64 = x.double().requires_grad_()
    (g_rev, gx_rev), (g_van, gx_van) = gradients_per_mode(reference64, x64, alpha=0.0, beta=1.0)
    trainable = [n for n, p in reference64.named_parameters() if p.requires_grad]
    assert len(g_rev) == len(g_van) == len([n for n in trainable if not (case.idle_at_re2 and case.idle_at_re2 in n)])
    assert gradient_gap(g_rev, g_van) <= 1e-10
    assert gradient_gap([gx_rev], [gx_van]) <= 1e-10

    # exact arithmetic in float32 at (1, 1/8), Dr²Net's regime where float reconstruction is useless
    (g_exact, _), (g_vanilla, _) = gradients_per_mode(_prepared(case, 2), x, modes=("exact", "vanilla"), alpha=1.0,
                                                      beta=0.125)
    if not case.ill_conditioned:
        assert gradient_gap(g_exact, g_vanilla) <= 1e-5
    else:
        ((truth, _),) = gradients_per_mode(reference64, x.double(), modes=("vanilla",), alpha=1.0, beta=0.125)
        float32_error = gradient_gap([g.double() for g in g_vanilla], truth)
        assert gradient_gap([g.double() for g in g_exact], truth) <= 2 * float32_error


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_bytes_do_not_grow_with_depth(name):
    case = CASES[name]
    if case.needs:
        pytest.importorskip(case.needs)
    x = case.input()
    saved = {}
    for depth in (2, 4):
        model = revtal.convert(_prepared(case, depth), "re2")
        saved[depth] = saved_bytes(lambda: (model(x) ** 2).sum(), model)
    assert saved[4] <= saved[2], saved
