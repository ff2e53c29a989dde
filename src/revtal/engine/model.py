"""The TAL model: video → feature extractor (a backbone prepared by its training mode) → the localizer ``localizer.name``.

What each training mode builds and trains is :mod:`revtal.engine.modes`; this module only assembles the extractor
a mode returns with the localizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from revtal.engine.config import Config
from revtal.engine.modes import TrainingMode, get_mode
from revtal.localizers.registry import build_localizer
from revtal.utils.memory import SavedTensorMeter


class TALModel(nn.Module):
    def __init__(self, extractor: nn.Module, localizer: nn.Module, mode: TrainingMode):
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
        return not self.mode.backbone_grad

    @property
    def temporal_stride(self) -> int:
        return int(self.extractor.temporal_stride)

    def train(self, mode: bool = True) -> "TALModel":
        super().train(mode)
        self.mode.set_training(self.extractor, mode)
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
        return self.mode.features(self.extractor, video)

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


class PrecomputedFeatures(nn.Module):
    """Stands in for the backbone when training on features written by ``revtal extract``."""

    temporal_stride = 1

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, features: Tensor) -> Tensor:
        return features


def feature_channels(features_dir: str) -> int:
    files = sorted(Path(features_dir).glob("*.npy"))
    if not files:
        raise FileNotFoundError(f"data.features_dir {features_dir!r} holds no .npy feature files (run revtal extract)")
    return int(np.load(files[0], mmap_mode="r").shape[0])


def build_extractor(config: Config, backbone_weights: dict | None = None) -> nn.Module:
    """The backbone of ``config`` as its training mode prepares it (or the stand-in for precomputed features);
    ``backbone_weights``: see :meth:`~revtal.engine.modes.TrainingMode.build_extractor`."""
    if config.data.features_dir:
        return PrecomputedFeatures(feature_channels(config.data.features_dir))
    mode = get_mode(config.backbone.mode)
    return mode.build_extractor(config.backbone, config.data.num_frames, config.data.img_size, backbone_weights)


def build_model(config: Config, num_classes: int, backbone_weights: dict | None = None) -> TALModel:
    extractor = build_extractor(config, backbone_weights)
    localizer = build_localizer(config.localizer.name, extractor.out_channels, num_classes, config.localizer.options.build())
    return TALModel(extractor, localizer, get_mode(config.backbone.mode))
