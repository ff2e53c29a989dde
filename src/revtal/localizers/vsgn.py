"""VSGN: an anchor-based temporal localizer for short actions, with video self-stitching and a cross-scale graph pyramid.

Zhao, Thabet & Ghanem, "Video Self-Stitching Graph Network for Temporal Action Localization" (ICCV 2021). The
pieces, in the order data flows through them:

* **Video self-stitching (VSS)**: a video no longer than ``short_ratio * stitch_window`` feature steps is magnified
  along time (linear interpolation) to fill the rest of the window and stitched after the original, separated by a
  ``stitch_gap`` of zeros: one sequence holding the clip at two scales. Its actions are targets at both scales, so
  short actions get more (and larger) anchors to match; at inference the magnified half's detections are mapped back
  onto the original's time axis and merged with the original half's before NMS. Longer videos pass unchanged.
* **Cross-scale graph pyramid (xGPN)**: a stem conv, then ``num_levels`` graph blocks, each
  ``maxpool2(ReLU(temporal conv(x) + graph(x)))``. The graph is built on the fly from the features: every node takes
  its ``num_neighbors`` nearest nodes in feature space (semantic edges; the temporal edges are the conv). In a
  stitched video half of them must come from the *other* scale (cross-scale edges), which is how the two scales
  exchange information. Edge messages are ``Linear([x_j, x_i])``, max-aggregated. A top-down decoder (transposed
  conv + lateral conv, as an FPN) gives a second pyramid of the same strides.
* **Scoring and boundary adjustment**: anchors of ``anchor_scales`` × stride at every node. An encoder head and a
  decoder head (shared across levels) each predict per-anchor class logits (sigmoid focal loss) and box offsets
  (GIoU loss on the decoded segments). Stage 0 (encoder) matches anchors to actions at tIoU ``iou_thresholds[0]``;
  stage 1 (decoder) regresses the anchors matched at ``iou_thresholds[1]`` and its classifier is trained against its
  *own* decoded segments (positive when they overlap an action by ``iou_thresholds[1]``), so the score it outputs
  rates the segment it is attached to. Stage 2 adjusts each decoder segment's start and end from the finest decoder
  features sampled around the boundary (``± boundary_ratio`` × its length), trained with GIoU on the segments that
  match an action at ``iou_thresholds[2]``. A detection is the adjusted segment with the decoder's class score.

Written for this project from the paper and the authors' public description; deliberate differences (documented
in docs/LOCALIZER.md): channel LayerNorm instead of GroupNorm in the heads (padding never changes statistics),
the node itself is not its own graph neighbour, the boundary offsets are in units of the sampling distance, the
boundary stage does not backpropagate into the decoder's segments, the losses are normalised by an EMA of the
positive count (as ActionFormer), and the actionness/start/end side heads of the release are not built (the
detection score is the decoder's classifier).

Positions are in grid units as in :mod:`revtal.localizers.actionformer`: input feature ``i`` sits at ``i`` and
covers ``[i - 0.5, i + 0.5]``; a node of a level with stride ``s`` pools inputs ``[j s, (j + 1) s)``, so its
centre is ``j s + (s - 1) / 2``. Any length works (padded internally to a multiple of the coarsest stride).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from revtal.localizers.blocks import ChannelLayerNorm
from revtal.localizers.losses import giou_loss_1d, match_segments, sigmoid_focal_loss
from revtal.localizers.postprocess import PostprocessConfig, postprocess_detections

# the decoded log-length offset is clipped here (e^4 ≈ 55× the anchor), as box coders do, so exp never overflows
_MAX_LOG_SCALE = 4.0


@dataclass
class VSGNConfig:
    """Architecture and training settings; defaults follow the paper's THUMOS-14 setting where it gives one."""

    hidden_dim: int = 256
    num_levels: int = 5
    stem_stride: int = 2  # 1 or 2: the finest level's stride is 2 * stem_stride (the paper: 4)
    num_neighbors: int = 4  # graph edges per node; in a stitched video half of them cross scales
    anchor_scales: tuple[float, ...] = (3.0, 7.5)  # anchor lengths in strides of the level
    head_num_layers: int = 4  # conv + LayerNorm + ReLU layers before each head's output conv
    prior_prob: float = 0.01
    iou_thresholds: tuple[float, float, float] = (0.5, 0.6, 0.7)  # stage 0 (encoder), 1 (decoder), 2 (boundaries)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    boundary_ratio: float = 0.125  # boundary features sampled at ± this × the segment's length
    # video self-stitching
    stitch: bool = True
    stitch_window: int = 256  # a stitched sequence's length (steps of the input features)
    short_ratio: float = 0.4  # videos up to short_ratio × stitch_window steps are stitched
    stitch_gap: int = 4  # zeros between the original and the magnified clip
    loss_normalizer_init: float = 100.0
    loss_normalizer_momentum: float = 0.9

    def __post_init__(self):
        if self.stem_stride not in (1, 2):
            raise ValueError(f"VSGNConfig.stem_stride must be 1 or 2, got {self.stem_stride}")
        if self.num_levels < 1 or self.hidden_dim < 1 or self.head_num_layers < 0:
            raise ValueError("VSGNConfig needs at least one level, a positive hidden_dim and head_num_layers >= 0")
        if self.num_neighbors < 1:
            raise ValueError(f"VSGNConfig.num_neighbors must be >= 1, got {self.num_neighbors}")
        if not self.anchor_scales or any(s <= 0 for s in self.anchor_scales):
            raise ValueError(f"VSGNConfig.anchor_scales must be positive numbers, got {self.anchor_scales}")
        if len(self.iou_thresholds) != 3 or not all(0 < t <= 1 for t in self.iou_thresholds):
            raise ValueError(f"VSGNConfig.iou_thresholds must be three values in (0, 1], got {self.iou_thresholds}")
        if not 0 < self.prior_prob < 1:
            raise ValueError(f"VSGNConfig.prior_prob must be in (0, 1), got {self.prior_prob}")
        if not 0 < self.short_ratio < 0.5:
            raise ValueError(f"VSGNConfig.short_ratio must be in (0, 0.5) so the magnified clip is longer, got {self.short_ratio}")
        if self.stitch_window < 8 or self.stitch_gap < 0:
            raise ValueError(f"VSGNConfig needs stitch_window >= 8 and stitch_gap >= 0, got {self.stitch_window}, {self.stitch_gap}")
        if self.boundary_ratio <= 0:
            raise ValueError(f"VSGNConfig.boundary_ratio must be > 0, got {self.boundary_ratio}")

    @property
    def strides(self) -> list[int]:
        return [self.stem_stride * 2 ** (level + 1) for level in range(self.num_levels)]


@dataclass
class StitchPlan:
    """Where one video's two scales sit in its stitched sequence: original ``[0, length)``, the magnified copy
    ``[offset, offset + factor * length)``; grid position ``u`` of the original is ``(u + 0.5) factor - 0.5 +
    offset`` in the copy (linear interpolation maps step centres this way)."""

    length: int
    offset: int
    factor: float

    def to_magnified(self, positions: Tensor) -> Tensor:
        return (positions + 0.5) * self.factor - 0.5 + self.offset

    def to_original(self, positions: Tensor) -> Tensor:
        return (positions - self.offset + 0.5) / self.factor - 0.5


@dataclass
class VSGNOutput:
    """Raw outputs of a batch; anchors are flattened over (level, node, scale), finest level first."""

    enc_logits: Tensor  # (B, P, num_classes)
    enc_offsets: Tensor  # (B, P, 2): centre shift (anchor lengths), log length ratio
    dec_logits: Tensor
    dec_offsets: Tensor
    boundary_offsets: Tensor  # (B, P, 2): start / end shifts of the decoder segments, in sampling distances
    anchors: Tensor  # (P, 2) segments in stitched grid units
    anchor_mask: Tensor  # (B, P) bool: the anchor's node is valid
    level_masks: list[Tensor]  # (B, T_l) bool per level
    plans: list[StitchPlan | None]  # per video: how it was stitched (None: not stitched)
    length: int = 0  # the unpadded input length T

    def decoder_segments(self) -> Tensor:
        return decode_segments(self.dec_offsets, self.anchors)

    def adjusted_segments(self, ratio: float) -> Tensor:
        segments = self.decoder_segments().detach()
        distance = (segments[..., 1] - segments[..., 0]).clamp(min=0)[..., None] * ratio
        return segments + self.boundary_offsets * distance


def decode_segments(offsets: Tensor, anchors: Tensor) -> Tensor:
    """Anchors (P, 2) shifted and scaled by ``offsets`` (..., P, 2) → segments (..., P, 2)."""
    centre = 0.5 * (anchors[:, 0] + anchors[:, 1])
    length = anchors[:, 1] - anchors[:, 0]
    new_centre = centre + offsets[..., 0] * length
    new_length = length * torch.exp(offsets[..., 1].clamp(max=_MAX_LOG_SCALE))
    return torch.stack([new_centre - 0.5 * new_length, new_centre + 0.5 * new_length], dim=-1)


def make_anchors(level_lengths: list[int], strides: list[int], scales: tuple[float, ...], device=None) -> Tensor:
    """Anchors of every level, node and scale (finest first): centred on the node, ``scale × stride`` long."""
    tables = []
    scale = torch.tensor(scales, dtype=torch.float32, device=device)
    for length, stride in zip(level_lengths, strides):
        centre = torch.arange(length, dtype=torch.float32, device=device) * stride + (stride - 1) / 2
        half = 0.5 * stride * scale
        tables.append(torch.stack([centre[:, None] - half, centre[:, None] + half], dim=-1).reshape(-1, 2))
    return torch.cat(tables)


# ------------------------------------------------------------------------------------------ self-stitching

def stitch_batch(features: Tensor, mask: Tensor, config: VSGNConfig) -> tuple[Tensor, Tensor, list[StitchPlan | None]]:
    """Stitch every short video of the batch with its magnified copy; returns features, mask and the plans."""
    items, plans = [], []
    for video in range(features.shape[0]):
        length = int(mask[video].sum())
        prefix = bool(mask[video, :length].all())
        clip = features[video, :, :length]
        magnified_length = config.stitch_window - length - config.stitch_gap
        if config.stitch and prefix and 0 < length <= config.short_ratio * config.stitch_window and magnified_length > length:
            magnified = F.interpolate(clip[None], size=magnified_length, mode="linear", align_corners=False)[0]
            gap = clip.new_zeros(clip.shape[0], config.stitch_gap)
            items.append(torch.cat([clip, gap, magnified], dim=1))
            plans.append(StitchPlan(length, length + config.stitch_gap, magnified_length / length))
        else:
            items.append(features[video] if not prefix else clip)
            plans.append(None)
    longest = max(item.shape[1] for item in items)
    out = features.new_zeros(features.shape[0], features.shape[1], longest)
    out_mask = torch.zeros(features.shape[0], longest, dtype=torch.bool, device=features.device)
    for video, (item, plan) in enumerate(zip(items, plans)):
        out[video, :, : item.shape[1]] = item
        if plan is None and item.shape[1] == features.shape[2]:
            out_mask[video, : item.shape[1]] = mask[video]
        else:
            out_mask[video, : item.shape[1]] = True
    return out, out_mask, plans


def stitched_targets(segments: Tensor, labels: Tensor, plan: StitchPlan | None) -> tuple[Tensor, Tensor]:
    """A video's actions on its stitched time axis: the originals, plus their magnified copies when stitched."""
    if plan is None or segments.numel() == 0:
        return segments, labels
    return torch.cat([segments, plan.to_magnified(segments)]), torch.cat([labels, labels])


# ------------------------------------------------------------------------------------------------ xGPN

class CrossScaleGraphBlock(nn.Module):
    """``maxpool2(ReLU(temporal conv(x) + max_j Linear([x_j, x_i])))`` over each node's feature-space neighbours j.

    ``scale`` (B, T) says which scale a node belongs to (0 original, 1 magnified); ``stitched`` (B,) which videos
    hold two. In those, the last ``num_neighbors // 2`` neighbours of every node are its nearest in the other scale.
    """

    def __init__(self, dim: int, num_neighbors: int):
        super().__init__()
        self.num_neighbors = num_neighbors
        self.temporal = nn.Conv1d(dim, dim, 3, padding=1)
        self.edge = nn.Linear(2 * dim, dim)

    @torch.no_grad()
    def neighbours(self, x: Tensor, mask: Tensor, scale: Tensor, stitched: Tensor) -> Tensor:
        """(B, T, k) indices of each node's graph neighbours (itself only where it has no valid other node)."""
        batch, _, length = x.shape
        nodes = x.transpose(1, 2).float()
        distance = torch.cdist(nodes, nodes).pow(2)  # (B, T, T)
        invalid = ~mask[:, None, :] | torch.eye(length, dtype=torch.bool, device=x.device)[None]
        distance = distance.masked_fill(invalid, math.inf)
        k = min(self.num_neighbors, length)
        cross = self.num_neighbors // 2 if k == self.num_neighbors else 0
        nearest_distance, nearest = distance.topk(k, dim=-1, largest=False)
        if cross:
            other = distance.masked_fill(scale[:, :, None] == scale[:, None, :], math.inf)
            cross_distance, cross_index = other.topk(cross, dim=-1, largest=False)
            use_cross = stitched[:, None, None]
            nearest = torch.cat([nearest[..., : k - cross], torch.where(use_cross, cross_index, nearest[..., k - cross:])], dim=-1)
            nearest_distance = torch.cat([nearest_distance[..., : k - cross],
                                          torch.where(use_cross, cross_distance, nearest_distance[..., k - cross:])], dim=-1)
        itself = torch.arange(length, device=x.device)[None, :, None].expand(batch, length, nearest.shape[-1])
        return torch.where(torch.isinf(nearest_distance), itself, nearest)

    def forward(self, x: Tensor, mask: Tensor, scale: Tensor, stitched: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, channels, length = x.shape
        index = self.neighbours(x, mask, scale, stitched)  # (B, T, k)
        nodes = x.transpose(1, 2)  # (B, T, C)
        neighbour_features = nodes[torch.arange(batch, device=x.device)[:, None, None], index]  # (B, T, k, C)
        centre = nodes[:, :, None].expand_as(neighbour_features)
        messages = self.edge(torch.cat([neighbour_features, centre], dim=-1)).amax(dim=2)  # (B, T, C)
        out = F.relu(self.temporal(x) + messages.transpose(1, 2)) * mask[:, None].to(x.dtype)
        out = F.max_pool1d(out, 2)
        return out, mask[:, 0::2] | mask[:, 1::2], scale[:, 0::2]


def _conv_relu(channels: int) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, 3, padding=1)


class _Head(nn.Module):
    """Per-anchor class logits and box offsets, shared across the levels of one pyramid."""

    def __init__(self, dim: int, num_anchors: int, num_classes: int, num_layers: int, prior_prob: float):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.cls_convs = nn.ModuleList(nn.Conv1d(dim, dim, 3, padding=1, bias=False) for _ in range(num_layers))
        self.cls_norms = nn.ModuleList(ChannelLayerNorm(dim) for _ in range(num_layers))
        self.reg_convs = nn.ModuleList(nn.Conv1d(dim, dim, 3, padding=1, bias=False) for _ in range(num_layers))
        self.reg_norms = nn.ModuleList(ChannelLayerNorm(dim) for _ in range(num_layers))
        self.cls_out = nn.Conv1d(dim, num_anchors * num_classes, 3, padding=1)
        self.reg_out = nn.Conv1d(dim, num_anchors * 2, 3, padding=1)
        # every class starts at the prior probability, every box at its anchor
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.zeros_(self.reg_out.bias)
        nn.init.normal_(self.reg_out.weight, std=1e-3)

    def _tower(self, x: Tensor, valid: Tensor, convs, norms) -> Tensor:
        for conv, norm in zip(convs, norms):
            x = F.relu(norm(conv(x))) * valid
        return x

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, T) → logits (B, T·A, num_classes) and offsets (B, T·A, 2)."""
        batch, _, length = x.shape
        valid = mask[:, None].to(x.dtype)
        logits = self.cls_out(self._tower(x, valid, self.cls_convs, self.cls_norms))
        offsets = self.reg_out(self._tower(x, valid, self.reg_convs, self.reg_norms))
        logits = logits.transpose(1, 2).reshape(batch, length * self.num_anchors, self.num_classes)
        offsets = offsets.transpose(1, 2).reshape(batch, length * self.num_anchors, 2)
        return logits, offsets


class _BoundaryAdjuster(nn.Module):
    """One boundary's shift from the finest decoder features at (boundary - d, boundary, boundary + d).

    A kernel-3 conv over the three samples, ``ReLU(W_left f(l) + W_centre f(c) + W_right f(r) + b)``, then a linear
    output. The three maps are applied to every node once and the results gathered per sample, which is the same
    arithmetic as convolving each proposal's gathered samples but costs one pass over the nodes, not one per
    proposal (a pyramid has several proposals per finest node).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.sample_conv = nn.Conv1d(dim, dim, 3)  # weight (out, in, 3): one map per sample
        self.out = nn.Linear(dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: Tensor, positions: Tensor, distance: Tensor, stride: int) -> Tensor:
        """features (B, C, T0), positions / distance (B, P) grid units → shifts (B, P) in sampling distances."""
        batch, channels, length = features.shape
        samples = torch.stack([positions - distance, positions, positions + distance], dim=-1)  # (B, P, 3)
        node = torch.round((samples - (stride - 1) / 2) / stride).clamp(0, length - 1).long()
        # (B, 3, C, T0): the sample_conv's map for each of the three taps applied to every node
        projected = torch.einsum("ocs,bct->bsot", self.sample_conv.weight, features)
        hidden = self.sample_conv.bias[None, None]
        for tap in range(3):
            index = node[:, None, :, tap].expand(-1, channels, -1)  # (B, C, P)
            hidden = hidden + torch.gather(projected[:, tap], 2, index).transpose(1, 2)
        return self.out(F.relu(hidden))[..., 0]


class VSGN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, config: VSGNConfig | None = None):
        super().__init__()
        if in_channels <= 0 or num_classes <= 0:
            raise ValueError(f"VSGN needs positive in_channels and num_classes, got {in_channels}, {num_classes}")
        self.config = cfg = config or VSGNConfig()
        self.in_channels, self.num_classes = in_channels, num_classes
        dim = cfg.hidden_dim
        self.stem = nn.Conv1d(in_channels, dim, 3, padding=1)
        self.encoder = nn.ModuleList(CrossScaleGraphBlock(dim, cfg.num_neighbors) for _ in range(cfg.num_levels))
        self.decoder_top = _conv_relu(dim)
        self.decoder_up = nn.ModuleList(nn.ConvTranspose1d(dim, dim, 3, stride=2, padding=1, output_padding=1)
                                        for _ in range(cfg.num_levels - 1))
        self.decoder_lateral = nn.ModuleList(_conv_relu(dim) for _ in range(cfg.num_levels - 1))
        self.decoder_merge = nn.ModuleList(_conv_relu(dim) for _ in range(cfg.num_levels - 1))
        anchors = len(cfg.anchor_scales)
        self.enc_head = _Head(dim, anchors, num_classes, cfg.head_num_layers, cfg.prior_prob)
        self.dec_head = _Head(dim, anchors, num_classes, cfg.head_num_layers, cfg.prior_prob)
        self.start_adjuster = _BoundaryAdjuster(dim)
        self.end_adjuster = _BoundaryAdjuster(dim)
        # one EMA of the positive count per loss term: encoder, decoder regression, decoder scores, boundaries
        self.register_buffer("loss_normalizer", torch.full((4,), float(cfg.loss_normalizer_init)))

    @property
    def length_multiple(self) -> int:
        return self.config.strides[-1]

    def forward(self, features: Tensor, mask: Tensor) -> VSGNOutput:
        if features.ndim != 3 or features.shape[1] != self.in_channels:
            raise ValueError(f"VSGN expects features (B, {self.in_channels}, T), got {tuple(features.shape)}")
        if mask.shape != (features.shape[0], features.shape[2]) or mask.dtype != torch.bool:
            raise ValueError(f"VSGN expects a bool mask of shape {(features.shape[0], features.shape[2])}, got {mask.dtype} {tuple(mask.shape)}")
        cfg = self.config
        length = features.shape[2]
        x, mask, plans = stitch_batch(features * mask[:, None].to(features.dtype), mask, cfg)
        padded = -(-x.shape[2] // self.length_multiple) * self.length_multiple
        x = F.pad(x, (0, padded - x.shape[2]))
        mask = F.pad(mask, (0, padded - mask.shape[1]), value=False)
        scale = torch.zeros(mask.shape, dtype=torch.long, device=x.device)
        for video, plan in enumerate(plans):
            if plan is not None:
                scale[video, plan.offset:] = 1
        stitched = torch.tensor([plan is not None for plan in plans], device=x.device)

        x = F.relu(self.stem(x)) * mask[:, None].to(x.dtype)
        if cfg.stem_stride == 2:
            x, mask, scale = F.max_pool1d(x, 2), mask[:, 0::2] | mask[:, 1::2], scale[:, 0::2]
        encoded, masks = [], []
        for block in self.encoder:
            x, mask, scale = block(x, mask, scale, stitched)
            encoded.append(x)
            masks.append(mask)

        top = len(encoded) - 1
        x = F.relu(self.decoder_top(encoded[top])) * masks[top][:, None].to(x.dtype)
        decoded = [x]
        for step, level in enumerate(range(top - 1, -1, -1)):
            lateral = F.relu(self.decoder_lateral[step](encoded[level]))
            upsampled = F.relu(self.decoder_up[step](x))
            x = F.relu(self.decoder_merge[step](lateral + upsampled)) * masks[level][:, None].to(x.dtype)
            decoded.append(x)
        decoded.reverse()  # finest first, like the encoder's levels

        enc = [self.enc_head(feat, level_mask) for feat, level_mask in zip(encoded, masks)]
        dec = [self.dec_head(feat, level_mask) for feat, level_mask in zip(decoded, masks)]
        num_anchors = len(cfg.anchor_scales)
        anchors = make_anchors([m.shape[1] for m in masks], cfg.strides, cfg.anchor_scales, device=x.device)
        anchor_mask = torch.cat([m.repeat_interleave(num_anchors, dim=1) for m in masks], dim=1)
        output = VSGNOutput(
            enc_logits=torch.cat([logits for logits, _ in enc], dim=1), enc_offsets=torch.cat([off for _, off in enc], dim=1),
            dec_logits=torch.cat([logits for logits, _ in dec], dim=1), dec_offsets=torch.cat([off for _, off in dec], dim=1),
            boundary_offsets=torch.zeros(0), anchors=anchors, anchor_mask=anchor_mask, level_masks=masks,
            plans=plans, length=length,
        )
        segments = output.decoder_segments().detach()
        distance = (segments[..., 1] - segments[..., 0]).clamp(min=0) * cfg.boundary_ratio
        finest, stride = decoded[0], cfg.strides[0]
        output.boundary_offsets = torch.stack([self.start_adjuster(finest, segments[..., 0], distance, stride),
                                               self.end_adjuster(finest, segments[..., 1], distance, stride)], dim=-1)
        return output

    # -------------------------------------------------------------------------------------------- training

    def targets(self, output: VSGNOutput, segments: list[Tensor], labels: list[Tensor]) -> dict[str, Tensor]:
        """Matched action index per candidate (-1: background) for each stage, (B, P) each, and the stitched actions."""
        cfg = self.config
        batch = output.anchor_mask.shape[0]
        if len(segments) != batch or len(labels) != batch:
            raise ValueError(f"loss got {len(segments)} segment lists and {len(labels)} label lists for a batch of {batch}")
        decoder_segments = output.decoder_segments().detach()
        stages = {"enc": [], "dec_reg": [], "dec_cls": [], "boundary": []}
        actions, action_labels = [], []
        for index, (video_segments, video_labels) in enumerate(zip(segments, labels)):
            video_segments = torch.as_tensor(video_segments, dtype=torch.float32).reshape(-1, 2).to(output.anchors.device)
            video_labels = torch.as_tensor(video_labels, dtype=torch.long).reshape(-1).to(output.anchors.device)
            if video_segments.shape[0] != video_labels.shape[0]:
                raise ValueError(f"batch item {index}: {video_segments.shape[0]} segments but {video_labels.shape[0]} labels")
            if video_segments.numel() and bool((video_segments[:, 1] < video_segments[:, 0]).any()):
                raise ValueError(f"batch item {index}: a segment ends before it starts: {video_segments.tolist()}")
            if video_labels.numel() and (video_labels.min() < 0 or video_labels.max() >= self.num_classes):
                raise ValueError(f"action labels must lie in [0, {self.num_classes}), got values {video_labels.tolist()}")
            video_segments, video_labels = stitched_targets(video_segments, video_labels, output.plans[index])
            actions.append(video_segments)
            action_labels.append(video_labels)
            valid = output.anchor_mask[index]
            for stage, candidates, threshold, best in (
                ("enc", output.anchors, cfg.iou_thresholds[0], True),
                ("dec_reg", output.anchors, cfg.iou_thresholds[1], True),
                ("dec_cls", decoder_segments[index], cfg.iou_thresholds[1], True),
                ("boundary", decoder_segments[index], cfg.iou_thresholds[2], False),
            ):
                matched = match_segments(candidates, video_segments, threshold, best_match=best)
                stages[stage].append(torch.where(valid, matched, torch.full_like(matched, -1)))
        return {"matches": {k: torch.stack(v) for k, v in stages.items()}, "actions": actions, "labels": action_labels}

    def _normalised(self, slot: int, count: int) -> Tensor:
        if self.training:
            momentum = self.config.loss_normalizer_momentum
            value = float(max(count, 1))
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # every DDP replica must keep the same normaliser: average the positive count over ranks
                shared = torch.tensor(value, device=self.loss_normalizer.device)
                torch.distributed.all_reduce(shared)
                value = float(shared) / torch.distributed.get_world_size()
            self.loss_normalizer[slot].mul_(momentum).add_((1 - momentum) * value)
        return self.loss_normalizer[slot].clone()  # a snapshot: the next term updates the buffer in place

    def _class_targets(self, matches: Tensor, labels: list[Tensor]) -> Tensor:
        targets = torch.zeros(*matches.shape, self.num_classes, device=matches.device)
        for video, video_labels in enumerate(labels):
            positive = matches[video] >= 0
            if positive.any():
                targets[video, positive, video_labels[matches[video, positive]]] = 1.0
        return targets

    def _regression(self, predicted: Tensor, matches: Tensor, actions: list[Tensor]) -> tuple[Tensor, int]:
        positive = matches >= 0
        count = int(positive.sum())
        if not count:
            return predicted.sum() * 0.0, 0
        target = torch.cat([actions[video][matches[video, positive[video]]] for video in range(matches.shape[0])])
        return giou_loss_1d(predicted[positive], target, reduction="sum"), count

    def loss(self, output: VSGNOutput, segments: list[Tensor], labels: list[Tensor]) -> dict[str, Tensor]:
        """Focal + GIoU losses of the encoder, the decoder and the boundary stage, each over an EMA of its positives."""
        cfg = self.config
        target = self.targets(output, segments, labels)
        matches, actions = target["matches"], target["actions"]
        valid = output.anchor_mask

        enc_cls_targets = self._class_targets(matches["enc"], target["labels"])
        enc_reg, enc_count = self._regression(decode_segments(output.enc_offsets, output.anchors), matches["enc"], actions)
        enc_norm = self._normalised(0, enc_count)
        enc_cls = sigmoid_focal_loss(output.enc_logits[valid], enc_cls_targets[valid], cfg.focal_alpha, cfg.focal_gamma) / enc_norm
        enc_reg = enc_reg / enc_norm

        dec_reg, dec_count = self._regression(output.decoder_segments(), matches["dec_reg"], actions)
        dec_reg = dec_reg / self._normalised(1, dec_count)
        dec_cls_targets = self._class_targets(matches["dec_cls"], target["labels"])
        dec_cls_count = int((matches["dec_cls"] >= 0).sum())
        dec_cls = sigmoid_focal_loss(output.dec_logits[valid], dec_cls_targets[valid], cfg.focal_alpha, cfg.focal_gamma) \
            / self._normalised(2, dec_cls_count)

        boundary, boundary_count = self._regression(output.adjusted_segments(cfg.boundary_ratio), matches["boundary"], actions)
        boundary = boundary / self._normalised(3, boundary_count)

        cls_loss = enc_cls + dec_cls
        reg_loss = enc_reg + dec_reg + boundary
        return {"total": cls_loss + reg_loss, "cls": cls_loss, "reg": reg_loss,
                "enc_cls": enc_cls, "enc_reg": enc_reg, "dec_cls": dec_cls, "dec_reg": dec_reg, "boundary": boundary,
                "num_positive": torch.tensor(float(enc_count), device=valid.device)}

    # ------------------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def predict(self, output: VSGNOutput, config: PostprocessConfig | None = None) -> list[dict]:
        """Decoder scores on the boundary-adjusted segments, mapped back from stitched time, then NMS and friends.

        Returns per video ``{"segments": (M, 2) grid units of the input, "scores": (M,), "labels": (M,)}``.
        """
        config = config or PostprocessConfig()
        adjusted = output.adjusted_segments(self.config.boundary_ratio).float()
        results = []
        for video, plan in enumerate(output.plans):
            probability = (torch.sigmoid(output.dec_logits[video].float()) * output.anchor_mask[video, :, None]).flatten()
            candidates = torch.nonzero(probability > config.pre_nms_threshold).flatten()
            if candidates.numel() > config.pre_nms_topk:
                candidates = candidates[torch.topk(probability[candidates], config.pre_nms_topk).indices]
            segments = adjusted[video][candidates // self.num_classes]
            scores = probability[candidates]
            labels = candidates % self.num_classes
            if plan is not None:
                centre = segments.mean(dim=1)
                magnified = centre >= plan.offset - 0.5
                in_gap = (centre > plan.length - 0.5) & ~magnified
                segments = torch.where(magnified[:, None], plan.to_original(segments), segments)
                keep = ~in_gap
                segments, scores, labels = segments[keep], scores[keep], labels[keep]
                segments = segments.clamp(min=-0.5, max=plan.length - 0.5)
            long_enough = (segments[:, 1] - segments[:, 0]) > config.min_duration
            results.append(postprocess_detections(segments[long_enough], scores[long_enough], labels[long_enough], config))
        return results
