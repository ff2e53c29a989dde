"""UniPT (Diao et al., CVPR 2024): a parallel network beside a frozen backbone, repurposed for TAL as LoSA Tab. 2 does.

UniPT never backpropagates through the backbone: it runs frozen (here under ``torch.no_grad()`` over clips, like
LoSA) and a light network *beside* it reads the intermediate features of its layers. Its two parts, after the
paper and the authors' public video (CLIP4Clip) implementation:

* **Parallel interaction.** Every layer's tokens are projected to a small width d (``ReLU`` then ``Linear C_i → d``;
  d = ``bottleneck``·C, C/2 by default, the authors' downsampling factor 2), and so is the last layer's output (the
  *anchor*). Each anchor vector attends to the layer's tokens with weights ``L1-normalise(ReLU(anchor · tokenᵀ))``
  (no softmax), and the attended sum plus the layer's own summary at the anchor's position is that layer's
  contribution.
* **Confidence aggregation.** A linear gate scores each layer from ``anchor ⊙ mean(layer tokens)``; a softmax over the
  layers weights their contributions; the weighted sum goes back up to C (``ReLU`` then ``Linear d → C``) and is added
  to the backbone's output: ``out = F_N + Up(Σ_i softmax(g)_i · merged_i)``.

Repurposed for TAL: the anchor is the backbone's own pooled feature of each output time step of a clip (``F_N``,
what head-only transfer feeds the localizer; in the authors' video code it is each frame's class token), the layer's
"own summary" at that position is its tokens averaged over space at that time step (resampled to the output's steps
where a layer's temporal length differs), and each clip interacts with its own layers only — UniPT has no mechanism
across clips, which is what LoSA's long-range adapters add. Outputs of all clips are concatenated in time.

UniPT does not start as the identity (``Up`` is randomly initialised, as in the authors' code): its output is the
backbone's feature plus a learned residual from the first step.

Memory: nothing of the backbone is saved; UniPT saves its own inputs — every adapted layer's full token map (what
the down-projection needs for its weight gradient) — so it grows with the number of adapted layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from revtal.adapters.frozen_backbone import (
    AdapterConfig, FrozenBackboneAdapter, bottleneck_width, clips_to_channels_sequence, resolve_layers,
)
from revtal.backbones.backbone import VideoBackbone


@dataclass
class UniPTConfig(AdapterConfig):
    """UniPT's choices; defaults follow the authors' code (width C/2, every layer)."""

    method = "UniPT"

    clip_frames: int = 16  # frames per backbone clip
    bottleneck: float = 0.5  # d / C: the width the interaction runs at (the authors' downsampling factor 2)
    layers: str | list[int] = "all"  # intermediate layers read: "all" | "deeper" | "shallower" | indices
    clip_batch: int | None = None  # clips per backbone call (bounds the no-grad peak); None: all at once
    probe_size: int = 64  # spatial size of the probe clip that discovers layer shapes (non-ViT backbones)
    in_channels: int = 3

    def __post_init__(self) -> None:
        self.check_positive_int("clip_frames", "probe_size", "in_channels")
        self.check_positive_int("clip_batch", optional=True)
        self.check_fraction("bottleneck")
        self.check_layers()


class UniPT(FrozenBackboneAdapter):
    """A frozen ``VideoBackbone`` plus UniPT's parallel network; ``forward(video) -> (B, C, T / temporal_stride)``."""

    def __init__(self, backbone: VideoBackbone, config: UniPTConfig | None = None):
        config = config or UniPTConfig()
        super().__init__(backbone, config.clip_frames, probe_size=config.probe_size, in_channels=config.in_channels)
        self.config = config
        layer_channels, layer_lengths, last_length = self.probe_layers()
        self.num_backbone_layers = len(layer_channels)
        self.layer_indices = resolve_layers(config.layers, self.num_backbone_layers, "UniPTConfig")
        self.last_length = last_length
        self.temporal_stride = self.check_temporal_stride(last_length, "UniPTConfig")
        self.out_channels = dim = backbone.out_channels
        self.width = width = bottleneck_width(dim, config.bottleneck)
        self.layer_lengths = [layer_lengths[i] for i in self.layer_indices]
        self.down = nn.ModuleList(nn.Linear(layer_channels[i], width) for i in self.layer_indices)
        self.anchor_down = nn.Linear(dim, width)
        self.gate = nn.Linear(width, 1)
        self.up = nn.Linear(width, dim)

    def interact(self, pooled: Tensor, layer_maps: list[Tensor]) -> Tensor:
        """Per clip: pooled output (N, C, T_N) and layer maps (N, C_i, T_i, H_i, W_i) → the residual (N, T_N, C)."""
        anchor = self.anchor_down(F.relu(pooled.transpose(1, 2)))  # (N, T_N, d)
        merged, scores = [], []
        for down, layer_map in zip(self.down, layer_maps):
            tokens = down(F.relu(layer_map.flatten(2).transpose(1, 2)))  # (N, T_i·H_i·W_i, d)
            weights = F.normalize(F.relu(anchor @ tokens.transpose(1, 2)), p=1, dim=-1)
            n, length = tokens.shape[0], layer_map.shape[2]
            per_step = tokens.reshape(n, length, -1, tokens.shape[-1]).mean(2)  # (N, T_i, d): space averaged away
            if length != self.last_length:
                per_step = F.adaptive_avg_pool1d(per_step.transpose(1, 2), self.last_length).transpose(1, 2)
            merged.append(weights @ tokens + per_step)
            scores.append(self.gate(anchor * tokens.mean(1, keepdim=True)))  # (N, T_N, 1)
        confidence = torch.softmax(torch.cat(scores, -1), -1)  # over layers, per clip and step
        combined = (torch.stack(merged, -1) * confidence[..., None, :]).sum(-1)
        return self.up(F.relu(combined))

    def forward(self, video: Tensor) -> Tensor:
        clips, n = self.cut_clips(video)
        pooled, layer_maps = self.frozen_features(clips, self.layer_indices, self.config.clip_batch)
        out = pooled + self.interact(pooled, layer_maps).transpose(1, 2)  # (B·n, C, T_N)
        return clips_to_channels_sequence(out, video.shape[0], n)

    def extra_repr(self) -> str:
        return (f"layers={self.layer_indices} of {self.num_backbone_layers}, width={self.width}, "
                f"clip_frames={self.clip_frames}")


__all__ = ["UniPT", "UniPTConfig"]
