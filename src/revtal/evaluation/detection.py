"""The ActivityNet temporal-detection mAP, with the semantics of the official evaluation code, and AR@AN.

Per class ``c`` and tIoU threshold ``θ``:

1. take every prediction labelled ``c`` (from all videos) and sort by score, descending. The sort is *stable*:
   predictions with equal scores keep their input order (videos in the order of the results file, predictions in
   the order of each video's list). The official code uses an unstable ``argsort()[::-1]``; ties are the only
   place where results can differ, and a stable order makes ours reproducible;
2. walk down the sorted list. A prediction in a video that has no ground truth of class ``c`` (including videos
   not in the ground truth at all) is a false positive. Otherwise it is compared with that video's ground-truth
   instances of ``c`` in descending tIoU order (stable for equal tIoUs) and matched to the first one not matched
   yet; it is a true positive if that instance's tIoU ≥ ``θ``, else a false positive. Each instance is matched at
   most once per threshold;
3. precision and recall along the list (recall over the number of ground-truth instances of ``c``); AP is the
   all-point interpolated area: recall steps times the monotone (right-to-left running max) precision envelope.

The ground truth is scored as distributed (segments past a video's declared duration and duplicate instances
included), as the official code reads it. THUMOS-14's "Ambiguous" instances are no class; under the THUMOS
protocol (``TH14eventdetpr.m``, the default) a false positive that overlaps an Ambiguous instance of its video is
removed from the list instead of counted; ``ambiguous="ignore"`` counts it, as ActivityNet-protocol code bases
(ActionFormer, OpenTAD) do.

mAP at ``θ`` averages AP over the classes that have at least one ground-truth instance in the evaluated subset; a
class without any prediction scores 0. Predictions whose label is not such a class cannot change any AP and are
ignored. The average mAP averages over the thresholds.

Threshold sets: ActivityNet ``0.5:0.05:0.95`` (10 values), THUMOS-14 ``0.3:0.1:0.7`` (5 values), both built with
``np.linspace`` as the official code does.

Average recall vs. average number of proposals (AR@AN) follows the official proposal evaluation: class-agnostic
proposals; at a fraction ``p`` of the budget each video keeps its ``floor(n_video · p · ratio)`` best proposals,
where ``ratio = max_AN · num_videos / total_proposals`` (so with ``N`` proposals per video, AN proposals each);
a ground-truth instance counts as recalled if any kept proposal reaches the threshold (no one-to-one matching).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from revtal.data.annotations import AnnotationError, AnnotationSet, load_annotations, read_predictions
from revtal.localizers.segments import pairwise_tiou

log = logging.getLogger(__name__)

ANET_TIOU: np.ndarray = np.linspace(0.5, 0.95, 10)
THUMOS_TIOU: np.ndarray = np.linspace(0.3, 0.7, 5)
DATASET_TIOU = {"anet": ANET_TIOU, "activitynet": ANET_TIOU, "thumos": THUMOS_TIOU, "thumos14": THUMOS_TIOU}

# the AR@AN budget fractions are floored; this keeps e.g. 100 * 0.29 = 28.999999999999996 from losing a proposal
_FLOOR_EPS = 1e-9


def temporal_iou(segment, candidates) -> np.ndarray:
    """tIoU of one ``(start, end)`` segment with each of ``candidates`` (M, 2) → (M,) float64."""
    segment = torch.as_tensor(np.asarray(segment, dtype=np.float64).reshape(1, 2))
    candidates = torch.as_tensor(np.asarray(candidates, dtype=np.float64).reshape(-1, 2))
    return pairwise_tiou(segment, candidates)[0].numpy()


def interpolated_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """All-point interpolated AP: Σ over recall steps of (recall increase) × max precision at that recall or above."""
    precision = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    recall = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


def match_video(gt_segments: np.ndarray, pred_segments: np.ndarray, tiou_thresholds: Sequence[float]) -> np.ndarray:
    """Greedy matching inside one video and class. ``pred_segments`` must be in decreasing score order.

    Returns a boolean (num_thresholds, num_predictions) true-positive table.
    """
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64)
    gt_segments = np.asarray(gt_segments, dtype=np.float64).reshape(-1, 2)
    pred_segments = np.asarray(pred_segments, dtype=np.float64).reshape(-1, 2)
    true_positive = np.zeros((thresholds.size, len(pred_segments)), dtype=bool)
    if len(gt_segments) == 0 or len(pred_segments) == 0:
        return true_positive
    overlaps = pairwise_tiou(torch.as_tensor(pred_segments), torch.as_tensor(gt_segments)).numpy()  # (M, N)
    matched = np.zeros((thresholds.size, len(gt_segments)), dtype=bool)
    rows = np.arange(thresholds.size)
    # a prediction below the loosest threshold with every instance is a false positive everywhere and locks nothing
    for k in np.flatnonzero(overlaps.max(axis=1) >= thresholds.min()):
        overlap = overlaps[k]
        by_overlap = np.argsort(-overlap, kind="stable")
        free = ~matched[:, by_overlap]
        first_free = free.argmax(axis=1)  # the best not-yet-matched instance, per threshold
        hit = free[rows, first_free] & (overlap[by_overlap[first_free]] >= thresholds)
        true_positive[:, k] = hit
        matched[rows[hit], by_overlap[first_free[hit]]] = True
    return true_positive


def average_precision(
    gt_segments: Mapping[str, np.ndarray],
    pred_video_ids: Sequence[str],
    pred_segments: np.ndarray,
    pred_scores: np.ndarray,
    tiou_thresholds: Sequence[float] = ANET_TIOU,
    ambiguous: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """AP of one class at each threshold → (num_thresholds,).

    ``gt_segments`` maps video id → that video's (N, 2) instances of the class; the predictions of the class are
    given as parallel sequences (video id, (M, 2) segment, (M,) score) in input order. ``ambiguous``: video id →
    (K, 2) segments where a false positive is not counted (THUMOS protocol).
    """
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64)
    num_positive = sum(len(np.asarray(v).reshape(-1, 2)) for v in gt_segments.values())
    if num_positive == 0:
        raise ValueError("average_precision: the class has no ground-truth instance, AP is undefined")
    pred_scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    pred_segments = np.asarray(pred_segments, dtype=np.float64).reshape(-1, 2)
    if not (len(pred_video_ids) == len(pred_segments) == len(pred_scores)):
        raise ValueError(
            f"average_precision: {len(pred_video_ids)} video ids, {len(pred_segments)} segments, {len(pred_scores)} scores"
        )
    if len(pred_scores) == 0:
        return np.zeros(thresholds.size)
    order = np.argsort(-pred_scores, kind="stable")  # descending; ties keep input order
    ranks_by_video: dict[str, list[int]] = {}
    for rank, index in enumerate(order):
        ranks_by_video.setdefault(pred_video_ids[index], []).append(rank)
    true_positive = np.zeros((thresholds.size, len(order)), dtype=bool)
    for video_id, ranks in ranks_by_video.items():
        video_gt = gt_segments.get(video_id)
        if video_gt is None:
            continue  # no instance of the class in this video (or video unknown): all false positives
        true_positive[:, ranks] = match_video(video_gt, pred_segments[order[ranks]], thresholds)
    near_ambiguous = np.zeros(len(order), dtype=bool)
    for video_id, ranks in ranks_by_video.items():
        zones = np.asarray((ambiguous or {}).get(video_id, ()), dtype=np.float64).reshape(-1, 2)
        if len(zones):
            overlap = pairwise_tiou(torch.as_tensor(pred_segments[order[ranks]]), torch.as_tensor(zones)).numpy()
            near_ambiguous[ranks] = overlap.max(axis=1) > 0
    ap = np.zeros(thresholds.size)
    for t in range(thresholds.size):
        counted = true_positive[t] | ~near_ambiguous  # a false positive over an Ambiguous instance is dropped
        hits = true_positive[t][counted]
        tp_cumulative = np.cumsum(hits, dtype=np.float64)
        fp_cumulative = np.cumsum(~hits, dtype=np.float64)
        precision = tp_cumulative / np.maximum(tp_cumulative + fp_cumulative, 1)
        ap[t] = interpolated_average_precision(precision, tp_cumulative / num_positive)
    return ap


@dataclass
class DetectionResult:
    tiou: list[float]  # rounded for display (np.linspace leaves 0.8999999999999999); matching used the exact values
    mAP: list[float]
    average_mAP: float
    per_class_ap: np.ndarray  # (num_thresholds, num_classes), columns in the order of ``classes``
    classes: list[str]  # the evaluated classes: those with ground truth in the subset
    warnings: list[str] = field(default_factory=list)  # what the score silently depends on (see video_id_warnings)

    def to_json(self) -> dict:
        return {"tiou": [float(t) for t in self.tiou], "mAP": [float(m) for m in self.mAP], "average_mAP": float(self.average_mAP)}

    def format_table(self) -> str:
        lines = [f"{'tIoU':>6}  {'mAP (%)':>8}"]
        lines += [f"{t:>6.2f}  {100 * m:>8.2f}" for t, m in zip(self.tiou, self.mAP)]
        lines.append(f"{'avg':>6}  {100 * self.average_mAP:>8.2f}")
        return "\n".join(lines)


def _resolve_ground_truth(ground_truth, subset: str | Sequence[str] | None) -> AnnotationSet:
    if isinstance(ground_truth, AnnotationSet):
        return ground_truth.subset(subset) if subset is not None else ground_truth
    if isinstance(ground_truth, (str, os.PathLike, Mapping)):
        return load_annotations(ground_truth, subset=subset)
    raise TypeError(f"ground_truth must be an AnnotationSet, a JSON path or a dict, got {type(ground_truth).__name__}")


def _thresholds(tiou_thresholds) -> np.ndarray:
    if isinstance(tiou_thresholds, str):
        if tiou_thresholds.lower() not in DATASET_TIOU:
            raise ValueError(f"unknown threshold set {tiou_thresholds!r}; choose one of {sorted(DATASET_TIOU)} or give numbers")
        return DATASET_TIOU[tiou_thresholds.lower()]
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0 or np.any((thresholds <= 0) | (thresholds > 1)):
        raise ValueError(f"tIoU thresholds must be in (0, 1], got {thresholds.tolist()}")
    return thresholds


AMBIGUOUS_RULES = ("thumos", "ignore")


def evaluate_detection(ground_truth, predictions, tiou_thresholds=ANET_TIOU, subset=None,
                       ambiguous: str = "thumos") -> DetectionResult:
    """ActivityNet detection mAP of ``predictions`` (results-format path or dict) against ``ground_truth``.

    ``ground_truth``: an :class:`AnnotationSet` or an ActivityNet-format JSON path / dict; ``subset`` restricts it
    (e.g. ``"validation"``). ``tiou_thresholds``: numbers, or ``"anet"`` / ``"thumos"``. ``ambiguous``: ``"thumos"``
    (false positives over THUMOS "Ambiguous" instances are not counted) or ``"ignore"`` (they are).
    """
    if ambiguous not in AMBIGUOUS_RULES:
        raise ValueError(f"ambiguous must be one of {AMBIGUOUS_RULES}, got {ambiguous!r}")
    thresholds = _thresholds(tiou_thresholds)
    annotations = _resolve_ground_truth(ground_truth, subset)
    results = read_predictions(predictions)

    gt_by_class: dict[int, dict[str, np.ndarray]] = {}
    for video_id, video in annotations.videos.items():
        for label in np.unique(video.labels):
            gt_by_class.setdefault(int(label), {})[video_id] = video.segments[video.labels == label]
    evaluated = sorted(gt_by_class)
    if not evaluated:
        raise AnnotationError(
            f"the ground truth{' subset ' + repr(subset) if subset is not None else ''} has no action instances to evaluate against"
        )

    class_index = annotations.class_index()
    preds_by_class: dict[int, tuple[list[str], list, list[float]]] = {c: ([], [], []) for c in evaluated}
    ignored: dict[str, int] = {}
    for video_id, video_predictions in results.items():
        for prediction in video_predictions:
            label = class_index.get(prediction["label"])
            if label not in preds_by_class:
                ignored[prediction["label"]] = ignored.get(prediction["label"], 0) + 1
                continue
            video_ids, segments, scores = preds_by_class[label]
            video_ids.append(video_id)
            segments.append(prediction["segment"])
            scores.append(prediction["score"])
    warnings = video_id_warnings(annotations, results, subset)
    if ignored:
        warnings.append(f"predictions with labels that have no ground truth in the evaluated set are ignored: {ignored}")
    for warning in warnings:  # returned, not logged: `revtal evaluate` prints them as its warnings
        log.debug("%s", warning)

    zones = {vid: v.ambiguous for vid, v in annotations.videos.items() if len(v.ambiguous)} if ambiguous == "thumos" else {}
    per_class_ap = np.zeros((thresholds.size, len(evaluated)))
    for column, label in enumerate(evaluated):
        video_ids, segments, scores = preds_by_class[label]
        per_class_ap[:, column] = average_precision(gt_by_class[label], video_ids, np.asarray(segments, dtype=np.float64),
                                                    np.asarray(scores, dtype=np.float64), thresholds, zones)
    mean_ap = per_class_ap.mean(axis=1)
    return DetectionResult(
        tiou=[round(float(t), 10) for t in thresholds],
        mAP=[float(m) for m in mean_ap],
        average_mAP=float(mean_ap.mean()),
        per_class_ap=per_class_ap,
        classes=[annotations.classes[c] for c in evaluated],
        warnings=warnings,
    )


def _examples(ids: Sequence[str], limit: int = 3) -> str:
    return ", ".join(repr(v) for v in ids[:limit]) + (", ..." if len(ids) > limit else "")


def _prefix_variants(video_id: str) -> tuple[str, ...]:
    """The id with ActivityNet's ``v_`` download prefix removed or added."""
    return (video_id[2:],) if video_id.startswith("v_") else (f"v_{video_id}",)


def video_id_warnings(annotations: AnnotationSet, results: Mapping[str, list], subset=None) -> list[str]:
    """Say when prediction video ids and ground-truth ids disagree: predictions for videos outside the ground truth
    count as false positives, so an id mismatch (most often ActivityNet's ``v_`` prefix on one side only) shows
    up only as a low score."""
    where = f"the ground truth (subset {subset!r})" if subset is not None else "the ground truth"
    unknown = [vid for vid in results if vid not in annotations.videos]
    messages = []
    if unknown:
        count = sum(len(results[vid]) for vid in unknown)
        messages.append(
            f"{len(unknown)} of {len(results)} predicted videos are not in {where}; their {count} predictions count "
            f"as false positives: {_examples(unknown)}"
        )
        prefixed = [vid for vid in unknown if any(v in annotations.videos for v in _prefix_variants(vid))]
        if prefixed:
            change = "removing" if prefixed[0].startswith("v_") else "adding"
            messages.append(
                f"{len(prefixed)} of them match a ground-truth video after {change} the 'v_' prefix (e.g. "
                f"{prefixed[0]!r} -> {_prefix_variants(prefixed[0])[0]!r}): the two files name videos differently"
            )
    unpredicted = [vid for vid, ann in annotations.videos.items() if len(ann.labels) and vid not in results]
    if unknown and unpredicted:
        messages.append(f"{len(unpredicted)} ground-truth videos with actions have no predictions: {_examples(unpredicted)}")
    return messages


@dataclass
class ProposalResult:
    tiou: list[float]
    average_proposals: np.ndarray  # (num_points,) average number of proposals per video
    recall: np.ndarray  # (num_thresholds, num_points)
    average_recall: np.ndarray  # (num_points,) mean over thresholds
    auc: float  # area under the AR-AN curve divided by the largest AN, in [0, 1]

    def recall_at(self, average_proposals: float) -> float:
        """AR at the largest evaluated AN not above ``average_proposals``."""
        eligible = np.flatnonzero(self.average_proposals <= average_proposals + _FLOOR_EPS)
        if eligible.size == 0:
            raise ValueError(f"AR@{average_proposals}: the smallest evaluated AN is {self.average_proposals[0]:.3g}")
        return float(self.average_recall[eligible[-1]])


def _read_proposals(proposals) -> dict[str, list[dict]]:
    """Proposal files may omit labels (class-agnostic); give them a placeholder so the shared reader validates them."""
    if isinstance(proposals, (str, os.PathLike)):
        proposals = _load_json(proposals)
    if isinstance(proposals, Mapping) and isinstance(proposals.get("results"), Mapping):
        filled = {
            video_id: [({"label": "proposal", **p} if isinstance(p, Mapping) and "label" not in p else p) for p in entries]
            if isinstance(entries, list) else entries
            for video_id, entries in proposals["results"].items()
        }
        proposals = {**proposals, "results": filled}
    return read_predictions(proposals)


def _load_json(path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"proposal file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None


def average_recall_vs_proposals(
    ground_truth,
    proposals,
    tiou_thresholds=ANET_TIOU,
    max_average_proposals: float = 100,
    num_points: int = 100,
    subset=None,
) -> ProposalResult:
    """AR@AN of class-agnostic proposals (results format; labels optional and ignored), see the module docstring.

    Only videos with ground-truth instances are evaluated, and only their proposals count towards the budget
    (the official code also counts proposals of other videos in the file, which changes nothing when the file
    holds exactly the evaluated videos).
    """
    thresholds = _thresholds(tiou_thresholds)
    annotations = _resolve_ground_truth(ground_truth, subset)
    results = _read_proposals(proposals)
    videos = [v for v in annotations.videos.values() if len(v.segments)]
    if not videos:
        raise AnnotationError("average_recall_vs_proposals: the ground truth has no action instances")

    overlaps = []  # per video: (num_gt, num_proposals) in decreasing proposal score
    for video in videos:
        entries = results.get(video.video_id, [])
        scores = np.array([p["score"] for p in entries], dtype=np.float64)
        segments = np.array([p["segment"] for p in entries], dtype=np.float64).reshape(-1, 2)[np.argsort(-scores, kind="stable")]
        overlaps.append(pairwise_tiou(torch.as_tensor(video.segments), torch.as_tensor(segments)).numpy())
    total = sum(o.shape[1] for o in overlaps)
    if total == 0:
        raise AnnotationError("average_recall_vs_proposals: there are no proposals for the ground-truth videos")
    ratio = max_average_proposals * len(videos) / total
    fractions = np.arange(1, num_points + 1) / num_points * ratio
    num_gt = sum(o.shape[0] for o in overlaps)
    recall = np.zeros((thresholds.size, num_points))
    for overlap in overlaps:
        used = np.minimum(np.floor(overlap.shape[1] * fractions + _FLOOR_EPS).astype(int), overlap.shape[1])
        for t, threshold in enumerate(thresholds):
            hit = overlap >= threshold
            # first proposal (in score order) that recalls each instance; never → beyond any budget
            first_hit = np.where(hit.any(axis=1), hit.argmax(axis=1), np.iinfo(np.int64).max)
            recall[t] += (first_hit[None, :] < used[:, None]).sum(axis=1)
    recall /= num_gt
    average_recall = recall.mean(axis=0)
    average_proposals = fractions * total / len(videos)
    auc = float(np.trapezoid(average_recall, average_proposals) / average_proposals[-1])
    return ProposalResult(tiou=[round(float(t), 10) for t in thresholds], average_proposals=average_proposals,
                          recall=recall, average_recall=average_recall, auc=auc)
