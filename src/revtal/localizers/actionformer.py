"""ActionFormer: an anchor-free, single-stage temporal action localizer over a feature pyramid.

Zhang, Wu & Li, "ActionFormer: Localizing Moments of Actions with Transformers" (ECCV 2022). The pieces:

* **Embedding**: masked Conv1d (kernel 3) + LayerNorm + ReLU layers projecting the input features ``(B, C, T)``.
* **Encoder**: pre-LN transformer blocks with local windowed masked self-attention; the stem blocks keep stride 1,
  each branch block downsamples ×2, so ``1 + num_branch_blocks`` pyramid levels of strides 1, 2, 4, ... come out.
* **Neck**: a LayerNorm per level (identity feature pyramid).
* **Heads**, shared across levels: a classification head (sigmoid per class, bias set so every class starts at the
  prior probability) and a regression head ``ReLU(scale_l · conv)`` predicting the distances from each point to the
  action's start and end, in units of the level's stride.

Positions are in grid units: input feature ``i`` sits at position ``i``; point ``j`` of a level with stride ``s`` at
``j * s``. Any sequence length works: the input is padded internally (mask False) to a multiple of the coarsest
stride, and padded positions never produce detections. Training targets and losses live in
:mod:`revtal.localizers.losses`; the inference clean-up in :mod:`revtal.localizers.postprocess`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from revtal.localizers.blocks import ChannelLayerNorm, MaskedConv1d, TransformerBlock
from revtal.localizers.losses import (
    POINT_POSITION,
    POINT_STRIDE,
    assign_labels,
    diou_loss_1d,
    make_points,
    sigmoid_focal_loss,
)
from revtal.localizers.postprocess import PostprocessConfig, postprocess_detections

THUMOS_REGRESSION_RANGES: tuple[tuple[float, float], ...] = ((0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, math.inf))


@dataclass
class ActionFormerConfig:
    """Architecture and training settings; defaults follow ActionFormer's THUMOS-14 configuration."""

    # embedding
    embed_dim: int = 512
    embed_kernel_size: int = 3
    num_embed_layers: int = 2
    # encoder
    num_heads: int = 4
    window_size: int | tuple[int, ...] = 19  # one value for all levels, or one per level; <= 0 means global attention
    num_stem_blocks: int = 2
    num_branch_blocks: int = 5
    scale_factor: int = 2
    mlp_ratio: int = 4
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    drop_path: float = 0.1
    layer_scale_init: float | None = 1e-4  # residual-branch scale as in the public release; None disables
    use_abs_position: bool = False  # add a sinusoidal position embedding after the embedding layers
    # heads
    head_dim: int = 512
    head_kernel_size: int = 3
    head_num_layers: int = 3  # including the output layer
    prior_prob: float = 0.01
    # Bias of the regression output, i.e. the initial offsets in strides. The release starts it at 0; behind the
    # ReLU that can leave one boundary's output negative at every position from the first step (we saw it on one
    # seed in eight with 32-channel heads), and a dead ReLU never learns. Starting at one stride keeps both alive.
    regression_bias_init: float = 1.0
    # targets and losses
    regression_ranges: tuple[tuple[float, float], ...] = THUMOS_REGRESSION_RANGES
    center_radius: float | None = 1.5  # in strides; None: every point inside the action
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_loss_weight: float = 1.0  # <= 0: balance the regression loss to the classification loss each step
    loss_normalizer_init: float = 100.0
    loss_normalizer_momentum: float = 0.9
    label_smoothing: float = 0.0

    def __post_init__(self):
        levels = self.num_levels
        if len(self.regression_ranges) != levels:
            raise ValueError(
                f"ActionFormerConfig.regression_ranges has {len(self.regression_ranges)} ranges for {levels} pyramid levels "
                f"(1 + num_branch_blocks={self.num_branch_blocks})"
            )
        if isinstance(self.window_size, (tuple, list)) and len(self.window_size) != levels:
            raise ValueError(f"ActionFormerConfig.window_size lists {len(self.window_size)} sizes for {levels} levels")
        if self.head_num_layers < 1 or self.num_embed_layers < 1:
            raise ValueError("ActionFormerConfig needs at least one embedding layer and one head layer")
        if not 0 < self.prior_prob < 1:
            raise ValueError(f"ActionFormerConfig.prior_prob must be in (0, 1), got {self.prior_prob}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"ActionFormerConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @property
    def num_levels(self) -> int:
        return 1 + self.num_branch_blocks

    @property
    def strides(self) -> list[int]:
        return [self.scale_factor**level for level in range(self.num_levels)]

    def level_windows(self) -> list[int]:
        if isinstance(self.window_size, (tuple, list)):
            return [int(w) for w in self.window_size]
        return [int(self.window_size)] * self.num_levels

    @classmethod
    def thumos(cls, **overrides) -> "ActionFormerConfig":
        return cls(**overrides)

    @classmethod
    def activitynet(cls, **overrides) -> "ActionFormerConfig":
        """The ActivityNet variant: 256-d, window 7 with global attention at the coarsest level, label smoothing 0.1."""
        base = cls(embed_dim=256, head_dim=256, window_size=(7, 7, 7, 7, 7, -1), label_smoothing=0.1)
        return replace(base, **overrides)


@dataclass
class LocalizerOutput:
    """Per-level raw outputs. Lists are indexed by pyramid level, finest first."""

    cls_logits: list[Tensor]  # (B, T_l, num_classes)
    offsets: list[Tensor]  # (B, T_l, 2): distances to start / end in strides of the level
    masks: list[Tensor]  # (B, T_l) bool
    points: list[Tensor]  # (T_l, 4): position, regression range low / high, stride
    length: int = 0  # the unpadded input length T


class _Head(nn.Module):
    """Conv trunk shared across levels: (layers-1) × [masked conv, LayerNorm, ReLU] then a masked conv output."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_layers: int, kernel_size: int):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for layer in range(num_layers - 1):
            self.convs.append(MaskedConv1d(in_channels if layer == 0 else hidden, hidden, kernel_size, bias=False))
            self.norms.append(ChannelLayerNorm(hidden))
        self.output = MaskedConv1d(hidden if num_layers > 1 else in_channels, out_channels, kernel_size)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x, _ = conv(x, mask)
            x = F.relu(norm(x)) * mask.to(x.dtype)
        out, _ = self.output(x, mask)
        return out


def sinusoidal_positions(length: int, dim: int, device=None) -> Tensor:
    """The transformer's fixed sine/cosine position embedding, (1, dim, length)."""
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table.T[None]


class ActionFormer(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, config: ActionFormerConfig | None = None):
        super().__init__()
        if in_channels <= 0 or num_classes <= 0:
            raise ValueError(f"ActionFormer needs positive in_channels and num_classes, got {in_channels}, {num_classes}")
        self.config = cfg = config or ActionFormerConfig()
        self.in_channels, self.num_classes = in_channels, num_classes
        dim = cfg.embed_dim

        self.embed_convs = nn.ModuleList()
        self.embed_norms = nn.ModuleList()
        for layer in range(cfg.num_embed_layers):
            self.embed_convs.append(MaskedConv1d(in_channels if layer == 0 else dim, dim, cfg.embed_kernel_size, bias=False))
            self.embed_norms.append(ChannelLayerNorm(dim))

        windows = cfg.level_windows()
        block = dict(mlp_ratio=cfg.mlp_ratio, attn_drop=cfg.attn_dropout, proj_drop=cfg.proj_dropout,
                     drop_path=cfg.drop_path, layer_scale_init=cfg.layer_scale_init)
        self.stem = nn.ModuleList(TransformerBlock(dim, cfg.num_heads, windows[0], 1, **block) for _ in range(cfg.num_stem_blocks))
        self.branch = nn.ModuleList(
            TransformerBlock(dim, cfg.num_heads, windows[level + 1], cfg.scale_factor, **block) for level in range(cfg.num_branch_blocks)
        )
        self.neck_norms = nn.ModuleList(ChannelLayerNorm(dim) for _ in range(cfg.num_levels))

        self.cls_head = _Head(dim, cfg.head_dim, num_classes, cfg.head_num_layers, cfg.head_kernel_size)
        self.reg_head = _Head(dim, cfg.head_dim, 2, cfg.head_num_layers, cfg.head_kernel_size)
        self.reg_scales = nn.Parameter(torch.ones(cfg.num_levels))

        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # every class starts at the prior probability, so the (mostly background) focal loss is small at step 0
        nn.init.constant_(self.cls_head.output.conv.bias, -math.log((1 - cfg.prior_prob) / cfg.prior_prob))
        nn.init.constant_(self.reg_head.output.conv.bias, cfg.regression_bias_init)
        self.register_buffer("loss_normalizer", torch.tensor(float(cfg.loss_normalizer_init)))

    @property
    def length_multiple(self) -> int:
        return self.config.scale_factor**self.config.num_branch_blocks

    def forward(self, features: Tensor, mask: Tensor) -> LocalizerOutput:
        if features.ndim != 3 or features.shape[1] != self.in_channels:
            raise ValueError(f"ActionFormer expects features (B, {self.in_channels}, T), got {tuple(features.shape)}")
        if mask.shape != (features.shape[0], features.shape[2]) or mask.dtype != torch.bool:
            raise ValueError(f"ActionFormer expects a bool mask of shape {(features.shape[0], features.shape[2])}, got {mask.dtype} {tuple(mask.shape)}")
        cfg = self.config
        length = features.shape[2]
        padded = -(-length // self.length_multiple) * self.length_multiple
        if padded != length:
            features = F.pad(features, (0, padded - length))
            mask = F.pad(mask, (0, padded - length), value=False)
        level_mask = mask[:, None, :]
        x = features * level_mask.to(features.dtype)

        for conv, norm in zip(self.embed_convs, self.embed_norms):
            x, _ = conv(x, level_mask)
            x = F.relu(norm(x)) * level_mask.to(x.dtype)
        if cfg.use_abs_position:
            x = x + sinusoidal_positions(padded, cfg.embed_dim, x.device).to(x.dtype) * level_mask.to(x.dtype)
        for block in self.stem:
            x, level_mask = block(x, level_mask)
        pyramid, pyramid_masks = [x], [level_mask]
        for block in self.branch:
            x, level_mask = block(x, level_mask)
            pyramid.append(x)
            pyramid_masks.append(level_mask)

        cls_logits, offsets, masks = [], [], []
        for level, (feat, level_mask) in enumerate(zip(pyramid, pyramid_masks)):
            feat = self.neck_norms[level](feat) * level_mask.to(feat.dtype)
            cls_logits.append(self.cls_head(feat, level_mask).transpose(1, 2))
            offsets.append(F.relu(self.reg_scales[level] * self.reg_head(feat, level_mask)).transpose(1, 2))
            masks.append(level_mask[:, 0, :])
        points = make_points([m.shape[1] for m in masks], cfg.strides, list(cfg.regression_ranges), device=features.device)
        return LocalizerOutput(cls_logits=cls_logits, offsets=offsets, masks=masks, points=points, length=length)

    def targets(self, output: LocalizerOutput, segments: list[Tensor], labels: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Stacked label assignment of the batch: cls targets (B, P, C) and regression targets (B, P, 2)."""
        batch = output.masks[0].shape[0]
        if len(segments) != batch or len(labels) != batch:
            raise ValueError(f"loss got {len(segments)} segment lists and {len(labels)} label lists for a batch of {batch}")
        points = torch.cat(output.points)
        cls_targets, reg_targets = [], []
        for index, (video_segments, video_labels) in enumerate(zip(segments, labels)):
            video_segments = torch.as_tensor(video_segments, dtype=torch.float32).reshape(-1, 2)
            video_labels = torch.as_tensor(video_labels, dtype=torch.long).reshape(-1)
            if video_segments.shape[0] != video_labels.shape[0]:
                raise ValueError(f"batch item {index}: {video_segments.shape[0]} segments but {video_labels.shape[0]} labels")
            if video_segments.numel() and bool((video_segments[:, 1] < video_segments[:, 0]).any()):
                raise ValueError(f"batch item {index}: a segment ends before it starts: {video_segments.tolist()}")
            video_cls, video_reg = assign_labels(points, video_segments, video_labels, self.num_classes, self.config.center_radius)
            cls_targets.append(video_cls)
            reg_targets.append(video_reg)
        return torch.stack(cls_targets), torch.stack(reg_targets)

    def loss(self, output: LocalizerOutput, segments: list[Tensor], labels: list[Tensor]) -> dict[str, Tensor]:
        """Focal + DIoU losses, each summed and divided by the EMA of the positive count (updated in training mode)."""
        cfg = self.config
        cls_targets, reg_targets = self.targets(output, segments, labels)
        valid = torch.cat(output.masks, dim=1)  # (B, P)
        logits = torch.cat(output.cls_logits, dim=1)
        offsets = torch.cat(output.offsets, dim=1)
        positive = (cls_targets.sum(dim=-1) > 0) & valid
        num_positive = int(positive.sum())
        if self.training:
            momentum = cfg.loss_normalizer_momentum
            count = float(max(num_positive, 1))
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # every DDP replica must keep the same normaliser: average the positive count over ranks
                shared = torch.tensor(count, device=self.loss_normalizer.device)
                torch.distributed.all_reduce(shared)
                count = float(shared) / torch.distributed.get_world_size()
            self.loss_normalizer.mul_(momentum).add_((1 - momentum) * count)
        normalizer = self.loss_normalizer

        cls_targets = cls_targets[valid]
        if cfg.label_smoothing > 0:
            cls_targets = cls_targets * (1 - cfg.label_smoothing) + cfg.label_smoothing / (self.num_classes + 1)
        cls_loss = sigmoid_focal_loss(logits[valid], cls_targets, cfg.focal_alpha, cfg.focal_gamma, reduction="sum") / normalizer
        if num_positive:
            reg_loss = diou_loss_1d(offsets[positive], reg_targets[positive], reduction="sum") / normalizer
        else:
            reg_loss = offsets.sum() * 0.0  # keeps the graph (and DDP) happy with no positives
        weight = cfg.reg_loss_weight if cfg.reg_loss_weight > 0 else cls_loss.detach() / max(float(reg_loss.detach()), 0.01)
        return {"total": cls_loss + weight * reg_loss, "cls": cls_loss, "reg": reg_loss,
                "num_positive": torch.tensor(float(num_positive), device=logits.device)}

    @torch.no_grad()
    def predict(self, output: LocalizerOutput, config: PostprocessConfig | None = None) -> list[dict]:
        """Decode every video: per-level threshold and top-k, boundaries from the offsets, then NMS and friends.

        Returns per video ``{"segments": (M, 2) grid units, "scores": (M,), "labels": (M,)}``.
        """
        config = config or PostprocessConfig()
        batch = output.masks[0].shape[0]
        results = []
        for video in range(batch):
            segments, scores, labels = [], [], []
            for logits, offsets, mask, points in zip(output.cls_logits, output.offsets, output.masks, output.points):
                probability = (torch.sigmoid(logits[video].float()) * mask[video, :, None]).flatten()
                candidates = torch.nonzero(probability > config.pre_nms_threshold).flatten()
                if candidates.numel() > config.pre_nms_topk:
                    best = torch.topk(probability[candidates], config.pre_nms_topk).indices
                    candidates = candidates[best]
                point_index = candidates // self.num_classes
                level_points = points[point_index]
                distance = offsets[video][point_index].float() * level_points[:, POINT_STRIDE, None]
                position = level_points[:, POINT_POSITION]
                level_segments = torch.stack([position - distance[:, 0], position + distance[:, 1]], dim=1)
                long_enough = (level_segments[:, 1] - level_segments[:, 0]) > config.min_duration
                segments.append(level_segments[long_enough])
                scores.append(probability[candidates][long_enough])
                labels.append((candidates % self.num_classes)[long_enough])
            results.append(postprocess_detections(torch.cat(segments), torch.cat(scores), torch.cat(labels), config))
        return results
