"""Video classification accuracy: top-k over videos and per-class (mean class) accuracy.

A video's scores are the average of its views' class probabilities (several clips and crops, as VideoMAE tests).
Top-k counts a video as correct when its label is among the k highest scores, ``k = min(k, num_classes)``; per-class
accuracy is the top-1 accuracy over the videos of each class, and the mean class accuracy averages it over the
classes that have videos (a class absent from the evaluation set has no accuracy, reported as null).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def average_views(view_scores: Tensor) -> Tensor:
    """(videos, views, classes) logits → (videos, classes) mean of the views' softmax probabilities."""
    if view_scores.ndim != 3:
        raise ValueError(f"expected (videos, views, classes) scores, got shape {tuple(view_scores.shape)}")
    return view_scores.float().softmax(-1).mean(1)


def topk_correct(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Bool (videos,): is the label among the ``k`` highest scores."""
    k = min(k, scores.shape[-1])
    return (scores.topk(k, dim=-1).indices == labels.view(-1, 1)).any(-1)


def classification_metrics(scores: Tensor, labels: Tensor, num_classes: int, ks: tuple[int, ...] = (1, 5)) -> dict:
    """``top1``, ``top5`` (fractions), ``mean_class_accuracy``, ``per_class`` (list, None where a class has no
    videos), ``num_classes`` and ``num_videos`` of (videos, classes) ``scores`` against integer ``labels``."""
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels).long().view(-1)
    if scores.ndim != 2 or scores.shape[0] != labels.numel() or scores.shape[1] != num_classes:
        raise ValueError(f"scores {tuple(scores.shape)} do not match {labels.numel()} labels x {num_classes} classes")
    if labels.numel() == 0:
        raise ValueError("no videos to evaluate")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}")
    out: dict = {f"top{k}": float(topk_correct(scores, labels, k).float().mean()) for k in ks}
    top1 = topk_correct(scores, labels, 1)
    per_class: list[float | None] = []
    for c in range(num_classes):
        mine = labels == c
        per_class.append(float(top1[mine].float().mean()) if bool(mine.any()) else None)
    present = [a for a in per_class if a is not None]
    out["mean_class_accuracy"] = sum(present) / len(present) if present else math.nan
    out["per_class"] = per_class
    out["num_classes"] = num_classes
    out["num_videos"] = int(labels.numel())
    return out
