"""Geometry of 1D segments: the one temporal-IoU formula used by post-processing and evaluation.

A segment is a ``(start, end)`` pair on a line (grid units or seconds, the formula does not care). The temporal IoU
of two segments is the length of their intersection over the length of their union; a segment of zero length
against anything has IoU 0 (the union is never zero unless both are empty points at the same place, which is
guarded against). Keeping a single implementation means NMS and the mAP protocol can never disagree on what
"overlap 0.5" means.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_tiou(first: Tensor, second: Tensor) -> Tensor:
    """Temporal IoU of every segment in ``first`` (N, 2) with every segment in ``second`` (M, 2) → (N, M)."""
    if first.ndim != 2 or first.shape[-1] != 2 or second.ndim != 2 or second.shape[-1] != 2:
        raise ValueError(f"pairwise_tiou expects (N, 2) and (M, 2) segments, got {tuple(first.shape)} and {tuple(second.shape)}")
    if not first.is_floating_point():
        first = first.double()
    if not second.is_floating_point():
        second = second.double()
    start = torch.maximum(first[:, None, 0], second[None, :, 0])
    end = torch.minimum(first[:, None, 1], second[None, :, 1])
    intersection = (end - start).clamp(min=0)
    union = (first[:, None, 1] - first[:, None, 0]) + (second[None, :, 1] - second[None, :, 0]) - intersection
    # union is 0 only for two identical zero-length segments; call that no overlap rather than 0/0
    return torch.where(union > 0, intersection / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))
