"""Clip classification on top of a video backbone, to (pre)train a backbone on trimmed clips.

Temporal features (B, C, T') from :class:`~revtal.backbones.backbone.VideoBackbone` are averaged over time and
mapped to class logits by one linear layer. The backbone stays a sub-module under ``.backbone``, so after training
``classifier.backbone`` (or ``classifier.backbone.net``'s state dict) is the pretrained backbone.
"""

from __future__ import annotations

from torch import Tensor, nn

from revtal.backbones.backbone import VideoBackbone


class ClipClassifier(nn.Module):
    def __init__(self, backbone: VideoBackbone, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ClipClassifier needs num_classes >= 1, got {num_classes}")
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.out_channels, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, video: Tensor) -> Tensor:
        """Clip (B, C, T, H, W) → logits (B, num_classes)."""
        return self.head(self.dropout(self.backbone(video).mean(-1)))
