"""Training targets and losses of an anchor-free temporal localizer (ActionFormer recipe).

Every position of every pyramid level is a candidate "point". Label assignment decides, for each point, which
ground-truth action (if any) it is responsible for:

* the point must lie strictly inside the action and, with centre sampling, strictly within ``radius * stride`` of
  the action's centre (the centre region is clipped to the action, so short actions keep their boundaries); a point
  exactly on the region's edge is negative, as in the reference implementation (docs/LOCALIZER.md measured the
  inclusive rule: points on a regular grid land on those edges often);
* the larger of its distances to the two boundaries must fall in the level's regression range, so long actions
  are predicted by coarse levels and short ones by fine levels;
* if several actions still qualify, the shortest one wins (actions of the same shortest length all count, so
  the classification target can be multi-label).

The classification branch is trained with the sigmoid focal loss over all valid points; the regression branch
predicts the distances (left, right) from the point to the action boundaries, in units of the level's stride,
and is trained on positive points only with the distance-IoU loss for 1D segments.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from revtal.localizers.segments import pairwise_tiou

# point table columns: position (grid units), regression range low, regression range high, stride
POINT_POSITION, POINT_RANGE_LOW, POINT_RANGE_HIGH, POINT_STRIDE = 0, 1, 2, 3

# two qualifying actions whose lengths differ by less than this (grid units) are treated as equally short
_LENGTH_TIE_TOLERANCE = 1e-3


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "sum"
) -> Tensor:
    """Focal loss on independent sigmoid outputs: ``-α_t (1 - p_t)^γ log p_t`` summed over elements.

    ``targets`` may be soft (label smoothing); ``p_t`` and ``α_t`` are then the usual linear interpolations
    ``p·t + (1-p)(1-t)`` and ``α·t + (1-α)(1-t)``. ``alpha < 0`` disables the class-balancing weight.
    """
    targets = targets.to(logits.dtype)
    probability = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probability * targets + (1 - probability) * (1 - targets)
    loss = cross_entropy * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def diou_loss_1d(pred_offsets: Tensor, target_offsets: Tensor, reduction: str = "sum", eps: float = 1e-8) -> Tensor:
    """Distance-IoU loss of segments given as (left, right) distances from a shared point, (N, 2) each.

    ``1 - IoU + (centre distance)² / (enclosing length)²``. Both segments contain the point (distances are
    non-negative), so the intersection is ``min(l, l*) + min(r, r*)`` and the enclosing segment
    ``max(l, l*) + max(r, r*)``; the centres sit at ``(r - l) / 2`` and ``(r* - l*) / 2`` from the point.
    """
    if pred_offsets.shape != target_offsets.shape or pred_offsets.shape[-1:] != (2,):
        raise ValueError(f"diou_loss_1d expects matching (N, 2) offsets, got {tuple(pred_offsets.shape)} and {tuple(target_offsets.shape)}")
    pred_left, pred_right = pred_offsets[..., 0], pred_offsets[..., 1]
    target_left, target_right = target_offsets[..., 0], target_offsets[..., 1]
    intersection = torch.minimum(pred_left, target_left) + torch.minimum(pred_right, target_right)
    union = (pred_left + pred_right) + (target_left + target_right) - intersection
    iou = intersection / union.clamp(min=eps)
    enclosing = torch.maximum(pred_left, target_left) + torch.maximum(pred_right, target_right)
    centre_distance = 0.5 * ((pred_right - pred_left) - (target_right - target_left))
    loss = 1.0 - iou + centre_distance**2 / enclosing.clamp(min=eps) ** 2
    return _reduce(loss, reduction)


def make_points(
    level_lengths: list[int], strides: list[int], regression_ranges: list[tuple[float, float]], device=None
) -> list[Tensor]:
    """The point table of each pyramid level: rows ``(position, range_low, range_high, stride)``.

    Point ``i`` of a level with stride ``s`` sits at grid position ``i * s`` (the position of the input feature the
    strided convolutions are centred on).
    """
    if not (len(level_lengths) == len(strides) == len(regression_ranges)):
        raise ValueError(
            f"make_points needs one stride and regression range per level: {len(level_lengths)} levels, "
            f"{len(strides)} strides, {len(regression_ranges)} ranges"
        )
    tables = []
    for length, stride, (low, high) in zip(level_lengths, strides, regression_ranges):
        table = torch.empty(length, 4, dtype=torch.float32, device=device)
        table[:, POINT_POSITION] = torch.arange(length, dtype=torch.float32, device=device) * stride
        table[:, POINT_RANGE_LOW] = low
        table[:, POINT_RANGE_HIGH] = high
        table[:, POINT_STRIDE] = stride
        tables.append(table)
    return tables


def assign_labels(
    points: Tensor, segments: Tensor, labels: Tensor, num_classes: int, center_radius: float | None = 1.5
) -> tuple[Tensor, Tensor]:
    """Targets of one video for all points (P, 4) given its actions ``segments`` (N, 2) grid units, ``labels`` (N,).

    Returns ``cls_targets`` (P, num_classes) in {0, 1} and ``reg_targets`` (P, 2): the (left, right) distances to
    the assigned action's boundaries divided by the point's stride (zero for negative points). ``center_radius``
    is in strides; ``None`` (or <= 0) uses every point inside the action.
    """
    num_points = points.shape[0]
    device = points.device
    if segments.numel() == 0:
        return (torch.zeros(num_points, num_classes, device=device), torch.zeros(num_points, 2, device=device))
    if segments.ndim != 2 or segments.shape[1] != 2 or labels.shape != (segments.shape[0],):
        raise ValueError(f"assign_labels expects segments (N, 2) and labels (N,), got {tuple(segments.shape)} and {tuple(labels.shape)}")
    segments = segments.to(device=device, dtype=points.dtype)
    labels = labels.to(device=device, dtype=torch.long)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"action labels must lie in [0, {num_classes}), got values {labels.tolist()}")

    position = points[:, POINT_POSITION, None]  # (P, 1)
    stride = points[:, POINT_STRIDE, None]
    start, end = segments[None, :, 0], segments[None, :, 1]  # (1, N)
    lengths = (end - start).expand(num_points, -1)
    left, right = position - start, end - position  # (P, N)

    if center_radius is not None and center_radius > 0:
        centre = 0.5 * (start + end)
        region_start = torch.maximum(centre - center_radius * stride, start)
        region_end = torch.minimum(centre + center_radius * stride, end)
        inside = torch.minimum(position - region_start, region_end - position) > 0
    else:
        inside = torch.minimum(left, right) > 0
    largest_distance = torch.maximum(left, right)
    in_range = (largest_distance >= points[:, POINT_RANGE_LOW, None]) & (largest_distance <= points[:, POINT_RANGE_HIGH, None])

    candidate_lengths = lengths.masked_fill(~(inside & in_range), math.inf)
    shortest, chosen = candidate_lengths.min(dim=1)  # (P,)
    winners = (candidate_lengths <= shortest[:, None] + _LENGTH_TIE_TOLERANCE) & torch.isfinite(candidate_lengths)
    one_hot = F.one_hot(labels, num_classes).to(points.dtype)  # (N, C)
    cls_targets = (winners.to(points.dtype) @ one_hot).clamp(max=1.0)

    positive = torch.isfinite(shortest)
    rows = torch.arange(num_points, device=device)
    reg_targets = torch.stack([left[rows, chosen], right[rows, chosen]], dim=1) / stride
    reg_targets = reg_targets * positive[:, None].to(reg_targets.dtype)
    return cls_targets, reg_targets


# ------------------------------------------------------------------------------------ anchor-based localizers (VSGN)

def giou_loss_1d(pred_segments: Tensor, target_segments: Tensor, reduction: str = "sum", eps: float = 1e-7) -> Tensor:
    """Generalised-IoU loss of 1D segments given as absolute ``(start, end)`` pairs, (N, 2) each.

    ``1 - IoU + (enclosing - union) / enclosing``. A predicted segment whose ends are swapped is read as the segment
    between them (its length stays non-negative), so an early, badly regressed box still gets a useful gradient.
    """
    if pred_segments.shape != target_segments.shape or pred_segments.shape[-1:] != (2,):
        raise ValueError(f"giou_loss_1d expects matching (N, 2) segments, got {tuple(pred_segments.shape)} and {tuple(target_segments.shape)}")
    pred_start = torch.minimum(pred_segments[..., 0], pred_segments[..., 1])
    pred_end = torch.maximum(pred_segments[..., 0], pred_segments[..., 1])
    target_start, target_end = target_segments[..., 0], target_segments[..., 1]
    intersection = (torch.minimum(pred_end, target_end) - torch.maximum(pred_start, target_start)).clamp(min=0)
    union = (pred_end - pred_start) + (target_end - target_start) - intersection
    enclosing = torch.maximum(pred_end, target_end) - torch.minimum(pred_start, target_start)
    iou = intersection / (union + eps)
    loss = 1.0 - iou + (enclosing - union) / (enclosing + eps)
    return _reduce(loss, reduction)


def match_segments(candidates: Tensor, segments: Tensor, iou_threshold: float, best_match: bool = True) -> Tensor:
    """Which action each candidate segment (anchor or proposal) is responsible for, by temporal IoU.

    ``candidates`` (P, 2) and ``segments`` (N, 2) in the same units. A candidate is matched to the action it overlaps
    most when that IoU reaches ``iou_threshold``; with ``best_match`` every action also claims the candidates that
    overlap it best (ties included, IoU > 0), so an action no candidate overlaps by the threshold is still learned
    (Faster R-CNN's low-quality matches, as VSGN's matcher). Returns (P,) indices into ``segments``, -1 unmatched.
    """
    if segments.numel() == 0 or candidates.numel() == 0:
        return torch.full((candidates.shape[0],), -1, dtype=torch.long, device=candidates.device)
    iou = pairwise_tiou(candidates.to(segments.dtype), segments)  # (P, N)
    best_iou, matched = iou.max(dim=1)
    result = torch.where(best_iou >= iou_threshold, matched, torch.full_like(matched, -1))
    if best_match:
        per_action_best = iou.max(dim=0).values  # (N,)
        claims = (iou == per_action_best[None]) & (per_action_best[None] > 0)
        claimed = claims.any(dim=1)
        result = torch.where(claimed, matched, result)
    return result
