"""``revtal.backbones.build``: video backbones by name, optionally initialised from a local checkpoint.

A registry in the style of timm: ``@register_backbone`` adds a factory under its function name;
:func:`list_backbones` lists them. A factory is called as ``factory(num_frames=..., img_size=..., checkpoint=...,
strict=..., **opts)`` and returns a :class:`~revtal.backbones.backbone.VideoBackbone`; ``checkpoint`` is the raw
state dict about to be loaded (or ``None``), given so a factory can read architectural options from it (the video
ViT takes its pooling layout and position-embedding type from it unless ``opts`` fix them).

Registered: ``vit_{tiny,s,b,l,g}_video`` (VideoMAE-style ViT; ``image_checkpoint=PATH`` inflates a timm image ViT
checkpoint instead, see :mod:`revtal.backbones.inflate`), ``swin3d_{t,s,b}`` (torchvision Video Swin) and
``r3d_18``, ``mc3_18``, ``r2plus1d_18`` (torchvision video ResNets), ``slowfast_r50``, ``slowfast_r101``
(pytorchvideo SlowFast, :mod:`revtal.backbones.slowfast`; options go to ``create_slowfast``). torchvision models are
always constructed with ``weights=None``: nothing is downloaded, pretrained weights come from ``pretrained=PATH``.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Callable, Mapping

from torchvision.models import video as tv_video
from torchvision.ops import StochasticDepth

from revtal.backbones.backbone import ResNet3dBackbone, Swin3dBackbone, VideoBackbone, VideoViTBackbone
from revtal.backbones.weights import StateDict, load_checked, read_state_dict, unwrap_state_dict
from revtal.backbones.inflate import inflate_state_dict
from revtal.backbones.slowfast import SlowFastBackbone, slowfast
from revtal.backbones.video_vit import infer_layout, video_vit

BackboneFactory = Callable[..., VideoBackbone]

_BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(factory: BackboneFactory | None = None, *, name: str | None = None):
    """Decorator: ``@register_backbone`` or ``@register_backbone(name="...")``."""

    def register(fn: BackboneFactory) -> BackboneFactory:
        key = name or fn.__name__
        if key in _BACKBONES:
            raise ValueError(f"backbone {key!r} is already registered")
        _BACKBONES[key] = fn
        return fn

    return register(factory) if factory is not None else register


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a shell-style ``pattern``, sorted."""
    return sorted(fnmatch.filter(_BACKBONES, pattern))


def build(
    name: str,
    pretrained: str | Path | StateDict | None = None,
    num_frames: int = 16,
    img_size: int = 224,
    strict: bool = True,
    **opts,
) -> VideoBackbone:
    """Build backbone ``name`` for clips of ``num_frames`` × ``img_size``² and, if ``pretrained`` is a local file
    (or a state dict already in memory), load it; the architecture options the checkpoint implies (a ViT's pooling
    layout, position embedding, layer scale) come from it unless ``opts`` fix them (``strict``: any missing / unexpected / mis-shaped key raises, listing them; ``strict=False`` loads what
    fits and warns). ``opts`` go to the factory (e.g. ``depth=2``, ``drop_path_rate=0.1``,
    ``stochastic_depth_prob=0.0``)."""
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}")
    if isinstance(pretrained, Mapping):
        checkpoint, source = unwrap_state_dict(pretrained), "<state dict>"
    elif pretrained is not None:
        checkpoint, source = read_state_dict(pretrained), str(pretrained)
    else:
        checkpoint, source = None, ""
    backbone = _BACKBONES[name](num_frames=num_frames, img_size=img_size, checkpoint=checkpoint, strict=strict, **opts)
    backbone.name = name
    if checkpoint is not None:
        backbone.load_checkpoint(checkpoint, strict=strict, source=source)
    return backbone


# -------------------------------------------------------------------------------------------------- video ViTs
def _video_vit_backbone(
    size: str,
    *,
    num_frames: int,
    img_size: int,
    checkpoint: StateDict | None,
    strict: bool,
    image_checkpoint: str | Path | None = None,
    **opts,
) -> VideoViTBackbone:
    config: dict[str, object] = {}
    if image_checkpoint is not None and checkpoint is not None:
        raise ValueError("give either pretrained= (a video checkpoint) or image_checkpoint= (to inflate), not both")
    inflated, dropped = None, []
    if image_checkpoint is not None:
        inflated, dropped = inflate_state_dict(
            read_state_dict(image_checkpoint), num_frames=num_frames, img_size=img_size,
            tubelet_size=opts.get("tubelet_size", 2), image_grid=opts.pop("image_grid", None),
        )
        config.update(infer_layout(inflated), patch_size=inflated["patch_embed.proj.weight"].shape[-1])
    elif checkpoint is not None:
        config.update(infer_layout(VideoViTBackbone.prepare_state_dict(checkpoint)[0]))
    config.update(opts)
    backbone = VideoViTBackbone(video_vit(size, num_frames=num_frames, img_size=img_size, **config))
    if inflated is not None:
        backbone.load_report = load_checked(
            backbone.net, inflated, strict=strict, source=f"{image_checkpoint} (inflated)", dropped=dropped
        )
    return backbone


@register_backbone
def vit_tiny_video(**kwargs) -> VideoBackbone:
    return _video_vit_backbone("tiny", **kwargs)


@register_backbone
def vit_s_video(**kwargs) -> VideoBackbone:
    return _video_vit_backbone("s", **kwargs)


@register_backbone
def vit_b_video(**kwargs) -> VideoBackbone:
    return _video_vit_backbone("b", **kwargs)


@register_backbone
def vit_l_video(**kwargs) -> VideoBackbone:
    return _video_vit_backbone("l", **kwargs)


@register_backbone
def vit_g_video(**kwargs) -> VideoBackbone:
    return _video_vit_backbone("g", **kwargs)


# -------------------------------------------------------------------------------------- torchvision video nets
def _torchvision(constructor: Callable, opts: dict):
    # the input size is free for these convolutional / windowed networks; checkpoint and strict are handled by build
    for key in ("num_frames", "img_size", "checkpoint", "strict"):
        opts.pop(key, None)
    return constructor(weights=None, **opts)


def _swin3d(constructor: Callable, opts: dict) -> Swin3dBackbone:
    # torchvision fixes stochastic_depth_prob inside swin3d_t/s/b; apply a requested value afterwards with the same
    # linear rule (block i of n drops with probability p * i / (n - 1))
    drop_path = opts.pop("stochastic_depth_prob", None)
    net = _torchvision(constructor, opts)
    if drop_path is not None:
        layers = [m for m in net.modules() if isinstance(m, StochasticDepth)]
        for i, layer in enumerate(layers):
            layer.p = drop_path * i / max(len(layers) - 1, 1)
    return Swin3dBackbone(net)


@register_backbone
def swin3d_t(**opts) -> VideoBackbone:
    return _swin3d(tv_video.swin3d_t, opts)


@register_backbone
def swin3d_s(**opts) -> VideoBackbone:
    return _swin3d(tv_video.swin3d_s, opts)


@register_backbone
def swin3d_b(**opts) -> VideoBackbone:
    return _swin3d(tv_video.swin3d_b, opts)


# temporal strides: r3d and r2plus1d halve time in layer2..layer4; mc3 convolves time only in its first layers
# (mixed convolutions) and never downsamples it
@register_backbone
def r3d_18(**opts) -> VideoBackbone:
    return ResNet3dBackbone(_torchvision(tv_video.r3d_18, opts), temporal_stride=8)


@register_backbone
def mc3_18(**opts) -> VideoBackbone:
    return ResNet3dBackbone(_torchvision(tv_video.mc3_18, opts), temporal_stride=1)


@register_backbone
def r2plus1d_18(**opts) -> VideoBackbone:
    return ResNet3dBackbone(_torchvision(tv_video.r2plus1d_18, opts), temporal_stride=8)


# --------------------------------------------------------------------------------------- pytorchvideo SlowFast
def _slowfast(depth: int, opts: dict) -> VideoBackbone:
    for key in ("num_frames", "img_size", "checkpoint", "strict"):
        opts.pop(key, None)
    alpha = opts.pop("alpha", 4)
    opts.setdefault("slowfast_fusion_conv_stride", (alpha, 1, 1))
    return SlowFastBackbone(slowfast(depth, **opts), alpha=alpha)


@register_backbone
def slowfast_r50(**opts) -> VideoBackbone:
    return _slowfast(50, opts)


@register_backbone
def slowfast_r101(**opts) -> VideoBackbone:
    return _slowfast(101, opts)
