"""AIM (Yang et al., ICLR 2023): spatial, temporal and joint adapters in each block of a frozen ViT, repurposed for
TAL as LoSA Tab. 2 does.

An AIM adapter is a bottleneck MLP, ``A(x) = W_up · GELU(W_down · x)`` (width ``bottleneck``·C, C/4 by default), with
``W_up`` and its bias zero at the start. Each adapted block gets three (after the authors' public implementation):

* temporal adaptation — the block's own (frozen) attention reused along time: the tokens of each spatial position
  attend to that position's tokens at the other time steps; its output goes through the T-adapter (no skip inside)
  and is added to the stream: ``x ← x + A_T(MSA_t(LN_1(x)))``;
* spatial adaptation — the block's own attention as it is, followed by the S-adapter with its skip:
  ``x ← x + LS_1(MSA(LN_1(x)) + A_S(MSA(LN_1(x))))``;
* joint adaptation — the J-adapter beside the MLP, scaled by ``joint_scale`` (s = 0.5):
  ``x ← x + LS_2(MLP(LN_2(x))) + s·A_J(LN_2(x))``.

With ``W_up = 0`` each adapter outputs exactly zero, so at initialisation the model equals the pretrained backbone
bitwise (``x + 0``, ``MSA + 0``).

Repurposed for a joint space-time video ViT (VideoMAE): AIM adapts *image* models, whose attention is spatial (per
frame); here the backbone's attention already spans space and time, so the "spatial" slot is that pretrained joint
attention, unchanged (so the start is the pretrained video model, not something else), and the temporal slot adds
attention over the clip's tubelet steps at each spatial position. Clips of ``clip_frames`` frames run through the
adapted backbone; the pooled per-step features of all clips, concatenated in time, go to the localizer.

Memory: like ST-Adapter, the adapters are in the residual stream and backpropagation passes through every frozen
block above them, keeping all their activations (and AIM runs each block's attention twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from revtal.adapters.frozen_backbone import AdapterConfig, InBlockAdapter, bottleneck_width
from revtal.backbones.backbone import VideoBackbone


@dataclass
class AIMConfig(AdapterConfig):
    """AIM's choices; defaults follow the paper (bottleneck 0.25, joint scale 0.5, all three adaptations)."""

    method = "AIM"

    clip_frames: int = 16  # frames per backbone clip (the ViT's own clip length)
    bottleneck: float = 0.25  # adapter hidden width / backbone width
    joint_scale: float = 0.5  # s, the weight of the J-adapter beside the MLP
    temporal: bool = True  # T-adapter after the block's attention reused over time
    spatial: bool = True  # S-adapter after the block's own attention
    joint: bool = True  # J-adapter beside the MLP
    layers: str | list[int] = "all"  # blocks that get adapters: "all" | "deeper" | "shallower" | indices

    def __post_init__(self) -> None:
        self.check_positive_int("clip_frames")
        self.check_fraction("bottleneck")
        self.check_layers()
        if isinstance(self.joint_scale, bool) or not isinstance(self.joint_scale, (int, float)) or self.joint_scale <= 0:
            raise ValueError(f"AIMConfig.joint_scale must be a positive number, got {self.joint_scale!r}")
        if not (self.temporal or self.spatial or self.joint):
            raise ValueError("AIMConfig: temporal, spatial and joint are all False — no adapter would learn")


class BottleneckAdapter(nn.Module):
    """``x + W_up·GELU(W_down·x)`` (``skip``) or the bottleneck alone; ``W_up`` and its bias start at zero."""

    def __init__(self, dim: int, width: int, skip: bool):
        super().__init__()
        self.skip = skip
        self.down = nn.Linear(dim, width)
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.up(F.gelu(self.down(x)))
        return x + out if self.skip else out


class AIM(InBlockAdapter):
    """A frozen video ViT with AIM's temporal, spatial and joint adapters in each selected block."""

    def __init__(self, backbone: VideoBackbone, config: AIMConfig | None = None):
        config = config or AIMConfig()
        super().__init__(backbone, config.clip_frames, config.layers, "AIMConfig")
        self.config = config
        self.width = width = bottleneck_width(self.embed_dim, config.bottleneck)
        self.adapters = nn.ModuleDict()
        for index in self.layer_indices:
            slots = nn.ModuleDict()
            if config.temporal:
                slots["temporal"] = BottleneckAdapter(self.embed_dim, width, skip=False)
            if config.spatial:
                slots["spatial"] = BottleneckAdapter(self.embed_dim, width, skip=True)
            if config.joint:
                slots["joint"] = BottleneckAdapter(self.embed_dim, width, skip=False)
            self.adapters[str(index)] = slots

    def temporal_attention(self, block: nn.Module, x: Tensor) -> Tensor:
        """The block's attention over time at each spatial position: (N, T'·S, C) → (N, T'·S, C)."""
        n, _, c = x.shape
        t = self.grid[0]
        per_position = x.reshape(n, t, -1, c).transpose(1, 2).reshape(-1, t, c)  # (N·S, T', C)
        out = block.attn(block.norm1(per_position))
        return out.reshape(n, -1, t, c).transpose(1, 2).reshape(n, -1, c)

    def run_block(self, index: int, block: nn.Module, tokens: Tensor) -> Tensor:
        slots = self.adapters[str(index)] if str(index) in self.adapters else {}
        x = tokens
        if "temporal" in slots:
            x = x + block.drop_path1(slots["temporal"](self.temporal_attention(block, x)))
        attended = block.attn(block.norm1(x))
        if "spatial" in slots:
            attended = slots["spatial"](attended)
        x = x + block.drop_path1(block.ls1(attended))
        normed = block.norm2(x)
        x = x + block.drop_path2(block.ls2(block.mlp(normed)))
        if "joint" in slots:
            x = x + block.drop_path2(self.config.joint_scale * slots["joint"](normed))
        return x

    def extra_repr(self) -> str:
        c = self.config
        kinds = [k for k in ("temporal", "spatial", "joint") if getattr(c, k)]
        return (f"blocks={self.layer_indices} of {self.num_blocks}, width={self.width}, adapters={kinds}, "
                f"joint_scale={c.joint_scale}, clip_frames={c.clip_frames}")


__all__ = ["AIM", "AIMConfig", "BottleneckAdapter"]
