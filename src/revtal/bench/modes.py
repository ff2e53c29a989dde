"""The benchmarked training modes, each as the model one training step runs: a backbone in that mode plus a trivial
head and loss.

The head is a 1×1 temporal convolution to one channel and the loss the mean of its squared output: small next to
any backbone, and something to train when the backbone is frozen. Every mode starts from the same randomly
initialised backbone (same seed), so modes differ only in how they run and backpropagate it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import revtal
from revtal.backbones import build
from revtal.bench.configs import MODE_DESCRIPTIONS, PEER_MODES, BenchConfig, is_vit
from revtal.bench.peers import PeerUnavailable, attach_peer


class ModeUnavailable(RuntimeError):
    """The mode cannot run in this build (a missing optional piece); the benchmark reports it and goes on."""


class TrainingTarget(nn.Module):
    """``video -> scalar loss``: features (trainable or, with ``frozen``, run under no_grad) and the head."""

    def __init__(self, features: nn.Module, out_channels: int, frozen: bool = False):
        super().__init__()
        self.features = features
        self.frozen = frozen
        if frozen:
            features.requires_grad_(False)
        self.head = nn.Conv1d(out_channels, 1, kernel_size=1)

    def forward(self, video: Tensor) -> Tensor:
        if self.frozen:
            with torch.no_grad():
                feats = self.features(video)
        else:
            feats = self.features(video)
        return self.head(feats).pow(2).mean()


@dataclass
class BuiltMode:
    target: TrainingTarget
    depth: int | None
    info: dict = field(default_factory=dict)  # recorded with the measurement (coefficients in use, ...)


def build_target(config: BenchConfig) -> BuiltMode:
    """The model of ``config``: backbone built, put in the mode, wrapped with the head. Raises ModeUnavailable or
    PeerUnavailable when an optional piece is missing."""
    torch.manual_seed(config.seed)
    opts = {"depth": config.depth} if config.depth is not None and is_vit(config.model) else {}
    backbone = build(config.model, num_frames=config.frames, img_size=config.img_size, **opts)
    depth = len(backbone.net.blocks) if is_vit(config.model) else None
    info: dict = {"description": MODE_DESCRIPTIONS[config.mode]}
    mode = config.mode
    features: nn.Module = backbone
    frozen = False
    if mode == "conventional":
        pass
    elif mode == "frozen":
        frozen = True
    elif mode == "checkpoint":
        revtal.convert(backbone, "original", backprop="checkpoint")
    elif mode == "re2":
        revtal.convert(backbone, "re2")
    elif mode == "dr2net_float":
        alpha, beta = config.float_coefficients
        revtal.convert(backbone, "dr2net", alpha=alpha, beta=beta, backprop="reversible")
    elif mode == "dr2net_exact":
        alpha, beta = config.exact_coefficients
        revtal.convert(backbone, "dr2net", alpha=alpha, beta=beta, backprop="exact")
    elif mode == "losa":
        features = _losa(backbone, config.frames)
    elif mode in PEER_MODES:
        if not is_vit(config.model):
            raise PeerUnavailable(f"{mode} peer: the peer stacks wrap ViT blocks; {config.model} is not a ViT")
        attach_peer(backbone.net, mode)
    else:  # configs validate modes; a mode listed there but not built here is a programming error
        raise AssertionError(f"mode {mode!r} has no builder")
    stages = revtal.reversible_stages(backbone)
    if stages:
        info["alpha"], info["beta"] = stages[0].alpha, stages[0].beta
        info["backprop"] = stages[0].backprop
    out_channels = getattr(features, "out_channels", backbone.out_channels)
    return BuiltMode(TrainingTarget(features, out_channels, frozen=frozen), depth, info)


def _losa(backbone: nn.Module, frames: int) -> nn.Module:
    """LoSA with its default choices, the benchmark clip being one backbone clip."""
    try:
        from revtal.adapters.losa import LoSA, LoSAConfig
    except ImportError as err:
        raise ModeUnavailable(f"LoSA adapters (revtal.adapters.losa) are not in this build: {err}") from err
    return LoSA(backbone, LoSAConfig(clip_frames=frames))
