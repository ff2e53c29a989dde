"""The TAL model: video → feature extractor (a backbone in one of the training modes, or LoSA) → ActionFormer.

Training modes of the backbone (``backbone.mode``):

==============  ===========================================================================================
``frozen``       backbone under ``no_grad`` in eval mode; only the localizer trains (head-only baseline)
``conventional`` full end-to-end finetuning with plain autograd
``checkpoint``   end to end, each block under ``torch.utils.checkpoint`` (non-reentrant)
``re2``          Re²TAL: rewired to α=0, β=1 from the pretrained weights, float reversible backprop
``hard``         Dr²Net "hard" finetuning: reversible at fixed (α, β) from the pretrained weights, no schedule
``dr2net``       Dr²Net dynamic finetuning: starts at (α0, β0) ≈ the pretrained network and follows the schedule
``scratch``      a reversible network at the schedule's end point trained from random initialisation
``losa``         frozen backbone + LoSA adapters (no gradient through the backbone)
==============  ===========================================================================================
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import revtal
from revtal.backbones import build as build_backbone
from revtal.engine.config import Config
from revtal.localizers.actionformer import ActionFormer, ActionFormerConfig
from revtal.reversible.schedule import CoefficientSchedule
from revtal.utils.memory import SavedTensorMeter


BACKBONE_MODES_BUILT = ("frozen", "conventional", "checkpoint", "re2", "hard", "dr2net", "scratch", "losa")


class TALModel(nn.Module):
    def __init__(self, extractor: nn.Module, localizer: ActionFormer, mode: str):
        super().__init__()
        self.extractor = extractor
        self.localizer = localizer
        self.mode = mode
        # set to measure the bytes the next feature pass saves for backward (CPU memory metric; DDP-safe because
        # the measurement happens inside the module's own forward)
        self.measure_next_features = False
        self.last_saved_bytes: int | None = None

    @property
    def frozen_backbone(self) -> bool:
        return self.mode == "frozen"

    @property
    def temporal_stride(self) -> int:
        return int(self.extractor.temporal_stride)

    def train(self, mode: bool = True) -> "TALModel":
        super().train(mode)
        if self.frozen_backbone:
            self.extractor.eval()  # frozen means frozen BatchNorm statistics and no dropout too
        return self

    def features(self, video: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, T, H, W) video and (B, T) frame mask → (B, C', T') features and (B, T') feature mask."""
        if self.measure_next_features:
            self.measure_next_features = False
            with SavedTensorMeter(self.extractor) as meter:
                feats = self._extract(video)
            self.last_saved_bytes = meter.bytes
        else:
            feats = self._extract(video)
        return feats, feature_mask(frame_mask, self.temporal_stride, feats.shape[-1])

    def _extract(self, video: Tensor) -> Tensor:
        if self.frozen_backbone:
            with torch.no_grad():
                return self.extractor(video)
        return self.extractor(video)

    def forward(self, video: Tensor, frame_mask: Tensor):
        feats, mask = self.features(video, frame_mask)
        return self.localizer(feats.float(), mask)

    def trainable_backbone(self) -> nn.Module | None:
        if self.frozen_backbone:
            return None
        return self.extractor

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        learnable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if self.frozen_backbone:
            learnable -= sum(p.numel() for p in self.extractor.parameters() if p.requires_grad)
        return {"total": total, "learnable": learnable}


def feature_mask(frame_mask: Tensor, stride: int, length: int) -> Tensor:
    """A feature is valid when any frame it covers is valid."""
    pooled = F.max_pool1d(frame_mask[:, None].float(), kernel_size=stride, stride=stride, ceil_mode=True)[:, 0]
    if pooled.shape[1] < length:
        pooled = F.pad(pooled, (0, length - pooled.shape[1]))
    return pooled[:, :length] > 0


def build_schedule(config: Config, iters_per_epoch: int) -> CoefficientSchedule:
    s = config.backbone.schedule
    return CoefficientSchedule(
        s.alpha0, s.alpha_end, s.beta0, s.beta_end, policy=s.policy, order=s.order, every=s.every, unit=s.unit,
        end_epoch=s.end_epoch, iters_per_epoch=iters_per_epoch,
    )


class PrecomputedFeatures(nn.Module):
    """Stands in for the backbone when training on features written by ``revtal extract``."""

    temporal_stride = 1

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, features: Tensor) -> Tensor:
        return features


def feature_channels(features_dir: str) -> int:
    import numpy as np
    from pathlib import Path

    files = sorted(Path(features_dir).glob("*.npy"))
    if not files:
        raise FileNotFoundError(f"data.features_dir {features_dir!r} holds no .npy feature files (run revtal extract)")
    return int(np.load(files[0], mmap_mode="r").shape[0])


def build_model(config: Config, num_classes: int) -> TALModel:
    bcfg = config.backbone
    mode = bcfg.mode
    if config.data.features_dir:
        extractor = PrecomputedFeatures(feature_channels(config.data.features_dir))
        return TALModel(extractor, _localizer(config, extractor.out_channels, num_classes), mode)
    # LoSA runs the backbone over clips of clip_frames; every other mode feeds it the whole sampled video
    frames = config.data.num_frames
    if mode == "losa":
        from revtal.adapters.losa import LoSAConfig

        frames = LoSAConfig.from_mapping(bcfg.losa, source="backbone.losa").clip_frames
    backbone = build_backbone(bcfg.name, num_frames=frames, img_size=config.data.img_size, **bcfg.options)
    if bcfg.pretrained and mode != "scratch":
        backbone.load_checkpoint(bcfg.pretrained)
    apply_backbone_mode(backbone, config)
    extractor: nn.Module = backbone
    if mode == "losa":
        from revtal.adapters.losa import LoSA, LoSAConfig

        extractor = LoSA(backbone, LoSAConfig.from_mapping(bcfg.losa, source="backbone.losa"))
    elif mode == "frozen":
        for p in backbone.parameters():
            p.requires_grad_(False)
    return TALModel(extractor, _localizer(config, extractor.out_channels, num_classes), mode)


def _localizer(config: Config, in_channels: int, num_classes: int) -> ActionFormer:
    known = {f.name for f in dataclasses.fields(ActionFormerConfig)}
    unknown = sorted(set(config.localizer.options) - known)
    if unknown:
        raise ValueError(f"localizer.options: unknown ActionFormerConfig fields {unknown}")
    options = {k: (tuple(map(tuple, v)) if k == "regression_ranges" else v) for k, v in config.localizer.options.items()}
    return ActionFormer(in_channels, num_classes, ActionFormerConfig(**options))


def apply_backbone_mode(backbone: nn.Module, config: Config) -> None:
    """Convert the backbone for its training mode (in place)."""
    bcfg = config.backbone
    mode = bcfg.mode
    if mode == "checkpoint":
        revtal.convert(backbone, "original", backprop="checkpoint")
    elif mode == "re2":
        revtal.convert(backbone, "re2", backprop="reversible")
    elif mode in ("hard", "scratch"):
        alpha, beta = (bcfg.alpha, bcfg.beta) if mode == "hard" else (bcfg.schedule.alpha_end, bcfg.schedule.beta_end)
        revtal.convert(backbone, "dr2net", alpha=alpha, beta=beta, backprop=bcfg.backprop, beta_bits=bcfg.beta_bits)
    elif mode == "dr2net":
        s = bcfg.schedule
        revtal.convert(backbone, "dr2net", alpha=s.alpha0, beta=s.beta0, backprop=bcfg.backprop, beta_bits=bcfg.beta_bits)
