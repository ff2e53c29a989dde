"""Activation memory of each converter family at one realistic size: the numbers of docs/CONVERTERS.md.

``python -m revtal.commands.coverage [--only NAME ...]`` (:func:`coverage_table`) builds each model with its library's constructor (random
weights: memory does not depend on them), batch 1, and counts the bytes autograd saves for backward in one
training forward (:mod:`revtal.utils.memory`, parameters excluded) three ways: the plain network, conventional
per-block checkpointing (``convert(model, "original", backprop="checkpoint")``) and Re²TAL's reversible rewiring
(``convert(model, "re2")``). It prints a markdown table; progress goes to stderr. Float32 on CPU.
"""

from __future__ import annotations

import copy
import importlib
import sys
import time
from typing import Callable

import timm
import torch
from torch import nn

from revtal.backbones import build as build_backbone

from revtal.reversible import convert
from revtal.utils.memory import saved_bytes


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    def build():
        return timm.create_model(name, pretrained=False, **kw)
    return build


def _torchvision(module: str, name: str, **kw) -> Callable[[], nn.Module]:
    def build():
        return getattr(importlib.import_module(module), name)(weights=None, **kw)
    return build


def _slowfast_r50() -> nn.Module:
    return build_backbone("slowfast_r50")


def _r3d_18() -> nn.Module:
    return build_backbone("r3d_18")


def _hf_videomae_base() -> nn.Module:
    import transformers  # optional (the hf extra), heavy: loaded only to measure this family

    class LastHiddenState(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = transformers.VideoMAEModel(transformers.VideoMAEConfig(num_frames=8))

        def forward(self, x):
            return self.model(x).last_hidden_state

    return LastHiddenState()


IMAGE = (1, 3, 224, 224)
# name: (family, what stays ordinary, builder, input shape)
MODELS: dict[str, tuple[str, str, Callable[[], nn.Module], tuple[int, ...]]] = {
    "timm vit_base_patch16_224": ("timm ViT", "patch embed, head", _timm("vit_base_patch16_224"), IMAGE),
    "timm eva02_base_patch14_224": ("timm EVA-02", "patch embed, rope, head",
                                    _timm("eva02_base_patch14_224.mim_in22k"), IMAGE),
    "timm beit_base_patch16_224": ("timm BEiT", "patch embed, head", _timm("beit_base_patch16_224"), IMAGE),
    "timm cait_s24_224": ("timm CaiT", "class-attention blocks, head", _timm("cait_s24_224"), IMAGE),
    "timm resnet50": ("timm ResNet", "stem, first block of each stage", _timm("resnet50"), IMAGE),
    "timm resnetv2_50": ("timm ResNetV2", "stem, first block of each stage", _timm("resnetv2_50"), IMAGE),
    "timm convnext_tiny": ("timm ConvNeXt", "stem, downsampling layers", _timm("convnext_tiny"), IMAGE),
    "timm swin_tiny_patch4_window7_224": ("timm Swin", "patch merging", _timm("swin_tiny_patch4_window7_224"), IMAGE),
    "timm swinv2_tiny_window8_256": ("timm Swin V2", "patch merging", _timm("swinv2_tiny_window8_256"),
                                     (1, 3, 256, 256)),
    "timm mvitv2_tiny": ("timm MViTv2", "pooling blocks (stage entry)", _timm("mvitv2_tiny"), IMAGE),
    "torchvision vit_b_16": ("torchvision ViT", "patch embed, head", _torchvision("torchvision.models", "vit_b_16"),
                             IMAGE),
    "torchvision convnext_tiny": ("torchvision ConvNeXt", "stem, downsampling layers",
                                  _torchvision("torchvision.models", "convnext_tiny"), IMAGE),
    "torchvision swin_t": ("torchvision Swin", "patch merging", _torchvision("torchvision.models", "swin_t"), IMAGE),
    "torchvision swin_v2_t": ("torchvision Swin V2", "patch merging", _torchvision("torchvision.models", "swin_v2_t"),
                              IMAGE),
    "torchvision resnet50": ("torchvision ResNet", "stem, first block of each stage",
                             _torchvision("torchvision.models", "resnet50"), IMAGE),
    "torchvision swin3d_t (8x224)": ("torchvision Video Swin", "patch merging",
                                     _torchvision("torchvision.models.video", "swin3d_t"), (1, 3, 8, 224, 224)),
    "torchvision r2plus1d_18 (8x112)": ("torchvision video ResNet", "stem, first block of layers 2-4",
                                        _torchvision("torchvision.models.video", "r2plus1d_18"), (1, 3, 8, 112, 112)),
    "revtal r3d_18 backbone (16x112)": ("torchvision video ResNet", "stem, first block of layers 2-4", _r3d_18,
                                        (1, 3, 16, 112, 112)),
    "torchvision regnet_y_400mf": ("torchvision RegNet", "stem, first block of each stage",
                                   _torchvision("torchvision.models", "regnet_y_400mf"), IMAGE),
    "torchvision mobilenet_v2": ("torchvision MobileNetV2", "conv layers, expanding/striding inverted residuals",
                                 _torchvision("torchvision.models", "mobilenet_v2"), IMAGE),
    "timm poolformer_s12": ("timm MetaFormer", "stem, downsampling layers", _timm("poolformer_s12"), IMAGE),
    "timm poolformerv2_s12": ("timm MetaFormer", "stem, downsampling layers", _timm("poolformerv2_s12"), IMAGE),
    "torchvision mvit_v2_s (16x224)": ("torchvision MViT", "pooling blocks (stage entry)",
                                       _torchvision("torchvision.models.video", "mvit_v2_s"), (1, 3, 16, 224, 224)),
    "pytorchvideo slowfast_r50 (32x224)": ("pytorchvideo SlowFast", "stems, first block of each stage, laterals",
                                           _slowfast_r50, (1, 3, 32, 224, 224)),
    "transformers VideoMAE-B (8x224)": ("HF VideoMAE", "embeddings", _hf_videomae_base, (1, 8, 3, 224, 224)),
}


def measure(build: Callable[[], nn.Module], shape: tuple[int, ...]) -> dict[str, int]:
    torch.manual_seed(0)
    reference = build().train()
    x = torch.randn(shape)
    out = {}
    for mode, make in (
        ("plain", lambda m: m),
        ("checkpoint", lambda m: convert(m, "original", backprop="checkpoint")),
        ("re2", lambda m: convert(m, "re2")),
    ):
        model = make(copy.deepcopy(reference))
        out[mode] = saved_bytes(lambda: model(x).float().square().mean(), model)
        del model
    return out


def coverage_table(only: list[str] | None = None) -> int:
    """Measure every family of :data:`MODELS` (those whose name contains one of ``only``), printing the markdown
    table row by row (progress to stderr)."""
    torch.set_num_threads(1)
    print("| family | model (batch 1, float32) | stays ordinary | plain MB | checkpoint MB | re2 MB | re2 / checkpoint |")
    print("|---|---|---|---|---|---|---|")
    for name, (family, ordinary, build, shape) in MODELS.items():
        if only and not any(s in name for s in only):
            continue
        start = time.time()
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        try:
            saved = measure(build, shape)
        except Exception as error:  # report and go on: one family failing must not hide the others
            print(f"| {family} | {name} | {ordinary} | failed: {type(error).__name__}: {error} | | | |", flush=True)
            continue
        mb = {k: v / 2**20 for k, v in saved.items()}
        print(f"| {family} | {name} | {ordinary} | {mb['plain']:.0f} | {mb['checkpoint']:.0f} | {mb['re2']:.0f} | "
              f"{mb['re2'] / mb['checkpoint']:.2f} |", flush=True)
        print(f"  {name}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    return 0
