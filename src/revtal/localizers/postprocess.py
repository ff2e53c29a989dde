"""From raw localizer scores to a short list of detections per video, in pure PyTorch.

The steps, in order (:func:`postprocess_detections` after the localizer's per-level decoding):

1. pre-NMS: drop candidates scoring below ``pre_nms_threshold``, keep the ``pre_nms_topk`` best per pyramid level
   and drop segments shorter than ``min_duration`` (grid units) — done while decoding, see ``ActionFormer.predict``;
2. non-maximum suppression, per class (``class_aware``) or over all classes together:
   ``hard`` removes every candidate overlapping a kept one by more than ``iou_threshold``; soft-NMS instead decays
   their scores, ``linear`` by ``(1 - tIoU)`` when tIoU > ``iou_threshold`` and ``gaussian`` by
   ``exp(-tIoU² / sigma)`` for every overlap; candidates that fall below ``min_score`` are dropped;
3. segment voting (optional): each kept segment's boundaries become the score-weighted mean of the boundaries of
   all pre-NMS candidates (same class when class-aware) overlapping it by at least ``voting_threshold``;
4. the ``max_segments`` best detections of the video are kept.

Detections stay in grid units until :func:`detections_to_seconds` maps them through the data module's
:class:`~revtal.data.timeline.TemporalGrid` and clips them to the video. For ActivityNet-style class-agnostic
proposals, :func:`fuse_video_classifier` turns each proposal into detections of the video's top-k classes of an
external video-level classifier with score ``sqrt(classifier score · proposal score)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from revtal.data.timeline import TemporalGrid
from revtal.localizers.segments import pairwise_tiou

NMS_METHODS = ("hard", "linear", "gaussian")


@dataclass
class PostprocessConfig:
    """Inference settings; defaults follow ActionFormer's THUMOS-14 test configuration."""

    pre_nms_threshold: float = 0.001
    pre_nms_topk: int = 2000  # per pyramid level
    min_duration: float = 0.05  # grid units
    nms_method: str = "gaussian"
    sigma: float = 0.5  # Gaussian soft-NMS
    iou_threshold: float = 0.1  # hard NMS and linear soft-NMS
    min_score: float = 0.001  # after soft-NMS decay
    class_aware: bool = True
    voting_threshold: float | None = 0.7  # None disables segment voting
    max_segments: int = 200

    def __post_init__(self):
        if self.nms_method not in NMS_METHODS:
            raise ValueError(f"PostprocessConfig.nms_method must be one of {NMS_METHODS}, got {self.nms_method!r}")
        if self.sigma <= 0:
            raise ValueError(f"PostprocessConfig.sigma must be > 0, got {self.sigma}")
        if self.max_segments <= 0 or self.pre_nms_topk <= 0:
            raise ValueError(f"PostprocessConfig.max_segments and pre_nms_topk must be > 0, got {self.max_segments}, {self.pre_nms_topk}")
        if self.voting_threshold is not None and not 0 < self.voting_threshold <= 1:
            raise ValueError(f"PostprocessConfig.voting_threshold must be in (0, 1] or None, got {self.voting_threshold}")

    @classmethod
    def activitynet(cls, **overrides) -> "PostprocessConfig":
        """ActionFormer's ActivityNet setting: class-agnostic Gaussian soft-NMS (σ 0.75), 100 segments, no voting."""
        base = cls(nms_method="gaussian", sigma=0.75, iou_threshold=0.1, min_score=0.001, class_aware=False,
                   voting_threshold=None, max_segments=100, pre_nms_topk=2000)
        return replace(base, **overrides)


def _check_candidates(segments: Tensor, scores: Tensor) -> None:
    if segments.ndim != 2 or segments.shape[1] != 2 or scores.shape != (segments.shape[0],):
        raise ValueError(f"expected segments (N, 2) and scores (N,), got {tuple(segments.shape)} and {tuple(scores.shape)}")


def nms(
    segments: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None, stop_below: float | None = None
) -> Tensor:
    """Hard NMS. Returns indices of the kept segments, best first (ties: lower index first).

    A candidate is suppressed by a kept one when their tIoU is strictly greater than ``iou_threshold``. Selection
    stops after ``max_keep`` segments or at the first score below ``stop_below`` (a caller's top-k cut-off).
    """
    _check_candidates(segments, scores)
    order = torch.sort(scores, descending=True, stable=True).indices
    kept: list[Tensor] = []
    while order.numel() and (max_keep is None or len(kept) < max_keep):
        best = order[0]
        if stop_below is not None and scores[best] < stop_below:
            break
        kept.append(best)
        rest = order[1:]
        overlap = pairwise_tiou(segments[best][None], segments[rest])[0]
        order = rest[overlap <= iou_threshold]
    return torch.stack(kept) if kept else torch.zeros(0, dtype=torch.long, device=segments.device)


def soft_nms(
    segments: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.1,
    sigma: float = 0.5,
    method: str = "gaussian",
    min_score: float = 0.001,
    max_keep: int | None = None,
    stop_below: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017). Returns ``(indices, decayed_scores)`` of the kept segments, best first.

    Repeatedly takes the highest (decayed) score and decays the others by its overlap: ``linear`` multiplies by
    ``1 - tIoU`` when tIoU > ``iou_threshold``; ``gaussian`` by ``exp(-tIoU² / sigma)``. Candidates whose score
    drops below ``min_score`` are discarded. Kept scores come out non-increasing, so stopping at ``max_keep`` or
    at the first score below ``stop_below`` loses nothing a later top-k would keep.
    """
    _check_candidates(segments, scores)
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft_nms method must be 'linear' or 'gaussian', got {method!r}")
    remaining = torch.arange(scores.numel(), device=scores.device)
    current = scores.clone()
    keep = current >= min_score
    remaining, current = remaining[keep], current[keep]
    kept, kept_scores = [], []
    while remaining.numel() and (max_keep is None or len(kept) < max_keep):
        top = int(torch.argmax(current))  # first maximum: ties go to the lower index
        if stop_below is not None and current[top] < stop_below:
            break
        best = remaining[top]
        kept.append(best)
        kept_scores.append(current[top])
        others = torch.ones_like(remaining, dtype=torch.bool)
        others[top] = False
        remaining, current = remaining[others], current[others]
        overlap = pairwise_tiou(segments[best][None], segments[remaining])[0].to(current.dtype)
        if method == "linear":
            decay = torch.where(overlap > iou_threshold, 1.0 - overlap, torch.ones_like(overlap))
        else:
            decay = torch.exp(-(overlap**2) / sigma)
        current = current * decay
        survive = current >= min_score
        remaining, current = remaining[survive], current[survive]
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=scores.device), scores.new_zeros(0)
    return torch.stack(kept), torch.stack(kept_scores)


def segment_voting(
    kept_segments: Tensor, candidate_segments: Tensor, candidate_scores: Tensor, iou_threshold: float
) -> Tensor:
    """Refine each kept segment (K, 2) as the score-weighted mean of candidates (N, 2) overlapping it ≥ threshold.

    A kept segment with no such candidate (impossible when it is itself among the candidates) is returned unchanged.
    """
    _check_candidates(candidate_segments, candidate_scores)
    if kept_segments.numel() == 0:
        return kept_segments.clone()
    overlap = pairwise_tiou(kept_segments, candidate_segments)  # (K, N)
    weights = (overlap >= iou_threshold).to(candidate_scores.dtype) * candidate_scores[None, :]
    total = weights.sum(dim=1, keepdim=True)
    voted = (weights @ candidate_segments.to(weights.dtype)) / total.clamp(min=torch.finfo(weights.dtype).tiny)
    return torch.where(total > 0, voted.to(kept_segments.dtype), kept_segments)


def _suppress(segments: Tensor, scores: Tensor, config: PostprocessConfig, stop_below: float | None) -> tuple[Tensor, Tensor]:
    if config.nms_method == "hard":
        keep = nms(segments, scores, config.iou_threshold, max_keep=config.max_segments, stop_below=stop_below)
        return keep, scores[keep]
    return soft_nms(segments, scores, config.iou_threshold, config.sigma, config.nms_method, config.min_score,
                    max_keep=config.max_segments, stop_below=stop_below)


def postprocess_detections(
    segments: Tensor, scores: Tensor, labels: Tensor, config: PostprocessConfig | None = None
) -> dict[str, Tensor]:
    """NMS, voting and the per-video cap on one video's candidates. Returns ``segments``, ``scores``, ``labels``."""
    config = config or PostprocessConfig()
    _check_candidates(segments, scores)
    if labels.shape != scores.shape:
        raise ValueError(f"expected one label per candidate, got labels {tuple(labels.shape)} for scores {tuple(scores.shape)}")
    groups = [labels == value for value in torch.unique(labels)] if config.class_aware else [torch.ones_like(labels, dtype=torch.bool)]
    out_segments, out_scores, out_labels = [], [], []
    # once max_segments detections are kept, a later class's detection scoring below the max_segments-th best can
    # never make the final cut: its NMS may stop there (classes keep their order, so ties resolve as without it)
    cutoff = None
    for member in groups:
        index = torch.nonzero(member).flatten()
        group_segments, group_scores = segments[index], scores[index]
        keep, kept_scores = _suppress(group_segments, group_scores, config, stop_below=cutoff)
        kept_segments = group_segments[keep]
        if config.voting_threshold is not None:
            kept_segments = segment_voting(kept_segments, group_segments, group_scores, config.voting_threshold)
        out_segments.append(kept_segments)
        out_scores.append(kept_scores)
        out_labels.append(labels[index][keep])
        kept_so_far = torch.cat(out_scores)
        if kept_so_far.numel() >= config.max_segments:
            cutoff = float(torch.topk(kept_so_far, config.max_segments).values[-1])
    if not out_segments:
        return {"segments": segments.new_zeros(0, 2), "scores": scores.new_zeros(0), "labels": labels.new_zeros(0)}
    all_segments, all_scores, all_labels = torch.cat(out_segments), torch.cat(out_scores), torch.cat(out_labels)
    order = torch.sort(all_scores, descending=True, stable=True).indices[: config.max_segments]
    return {"segments": all_segments[order], "scores": all_scores[order], "labels": all_labels[order]}


def detections_to_seconds(detections: dict, grid: TemporalGrid, duration: float | None) -> dict:
    """Map a video's detections from grid units to seconds through ``grid``, clipped to ``[0, duration]``.

    Detections that end up empty after clipping (entirely outside the video) are dropped. Returns a new dict with
    float64 ``segments`` in seconds and the other entries filtered alike.
    """
    segments = torch.as_tensor(detections["segments"])
    if segments.numel() and (segments.ndim != 2 or segments.shape[1] != 2):
        raise ValueError(f"detections['segments'] must be (M, 2), got {tuple(segments.shape)}")
    seconds = torch.from_numpy(grid.to_seconds(segments.detach().cpu().reshape(-1, 2).double().numpy()))
    keep = torch.ones(seconds.shape[0], dtype=torch.bool)
    if duration is not None:
        if not duration > 0:
            raise ValueError(f"detections_to_seconds needs a positive duration, got {duration!r}")
        seconds = seconds.clamp(0.0, float(duration))
        keep = seconds[:, 1] > seconds[:, 0]
    out = {}
    for key, value in detections.items():
        # per-detection arrays are filtered with the segments; anything else (e.g. a video id) passes through
        if isinstance(value, (Tensor, np.ndarray)) and value.ndim >= 1 and value.shape[0] == keep.numel():
            out[key] = torch.as_tensor(value).detach().cpu()[keep]
        else:
            out[key] = value
    out["segments"] = seconds[keep]
    return out


def load_video_classifier_scores(path: str | Path | Mapping, classes: Sequence[str]) -> dict[str, Tensor]:
    """Read external video-level class scores, returned per video as a (num_classes,) tensor in ``classes`` order.

    Accepted layouts: ``{"classes" | "class": [names], "results": {video_id: [score per class]}}`` (the layout of the
    classifier files shared for ActivityNet) or ``{video_id: {class_name: score}}`` (classes missing score 0).
    """
    where = str(path) if not isinstance(path, Mapping) else "<classifier scores>"
    data = path if isinstance(path, Mapping) else json.loads(Path(path).read_text())
    index = {name: i for i, name in enumerate(classes)}
    scores: dict[str, Tensor] = {}
    if "results" in data:
        names = data.get("classes", data.get("class"))
        if not isinstance(names, list):
            raise ValueError(f"{where}: a 'results' layout needs a 'classes' (or 'class') list of class names")
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(f"{where}: classifier classes not in the dataset's classes: {unknown[:5]}")
        columns = torch.tensor([index[n] for n in names], dtype=torch.long)
        for video_id, values in data["results"].items():
            if not isinstance(values, list) or len(values) != len(names):
                raise ValueError(f"{where}: results[{video_id!r}] must be a list of {len(names)} scores")
            row = torch.zeros(len(classes), dtype=torch.float64)
            row[columns] = torch.tensor([float(v) for v in values], dtype=torch.float64)
            scores[video_id] = row
        return scores
    for video_id, per_class in data.items():
        if not isinstance(per_class, Mapping):
            raise ValueError(f"{where}: entry {video_id!r} must map class names to scores")
        row = torch.zeros(len(classes), dtype=torch.float64)
        for name, value in per_class.items():
            if name not in index:
                raise ValueError(f"{where}: video {video_id!r} scores unknown class {name!r}")
            row[index[name]] = float(value)
        scores[video_id] = row
    return scores


def fuse_video_classifier(detections: dict, video_scores: Tensor, top_k: int = 2) -> dict:
    """Relabel class-agnostic detections with the video's ``top_k`` classifier classes.

    Each detection is repeated once per top class with score ``sqrt(class score · detection score)``; the result
    is sorted by score (descending, stable). ``video_scores`` is the (num_classes,) classifier output.
    """
    video_scores = torch.as_tensor(video_scores, dtype=torch.float64).flatten()
    if video_scores.numel() == 0 or top_k <= 0:
        raise ValueError(f"fuse_video_classifier needs class scores and top_k > 0, got {video_scores.numel()} scores, top_k={top_k}")
    top_scores, top_classes = torch.sort(video_scores, descending=True, stable=True)
    top_scores, top_classes = top_scores[:top_k], top_classes[:top_k]
    segments = torch.as_tensor(detections["segments"])
    det_scores = torch.as_tensor(detections["scores"]).to(torch.float64)
    fused = torch.sqrt(top_scores[:, None].clamp(min=0) * det_scores[None, :].clamp(min=0)).flatten()  # (k * M,)
    labels = top_classes[:, None].expand(-1, det_scores.numel()).flatten()
    segments = segments.repeat(top_classes.numel(), 1)
    order = torch.sort(fused, descending=True, stable=True).indices
    return {"segments": segments[order], "scores": fused[order], "labels": labels[order]}
