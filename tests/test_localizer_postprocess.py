"""NMS variants, voting, the per-video cap, grid → seconds and video-classifier fusion on hand cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

from revtal.data.timeline import TemporalGrid
from revtal.localizers.postprocess import (
    PostprocessConfig,
    detections_to_seconds,
    fuse_video_classifier,
    load_video_classifier_scores,
    nms,
    postprocess_detections,
    segment_voting,
    soft_nms,
)
from revtal.localizers.segments import pairwise_tiou

# a [0,10] .9; b [1,11] .8 (tIoU with a 9/11); c [20,30] .7 (no overlap); d [5,15] .6 (with a 1/3, with b 6/14)
SEGMENTS = torch.tensor([[0.0, 10.0], [1.0, 11.0], [20.0, 30.0], [5.0, 15.0]], dtype=torch.float64)
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)


def test_pairwise_tiou():
    expected = torch.tensor([[1, 9 / 11, 0, 1 / 3], [9 / 11, 1, 0, 6 / 14], [0, 0, 1, 0], [1 / 3, 6 / 14, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(pairwise_tiou(SEGMENTS, SEGMENTS), expected)


def test_hard_nms():
    assert nms(SEGMENTS, SCORES, iou_threshold=0.5).tolist() == [0, 2, 3]
    assert nms(SEGMENTS, SCORES, iou_threshold=0.3).tolist() == [0, 2]  # d's 1/3 > 0.3 now suppresses it
    assert nms(SEGMENTS, SCORES, iou_threshold=0.5, max_keep=2).tolist() == [0, 2]
    assert nms(SEGMENTS[:0], SCORES[:0], 0.5).numel() == 0


def test_linear_soft_nms():
    keep, scores = soft_nms(SEGMENTS, SCORES, iou_threshold=0.3, method="linear", min_score=0.001)
    # a keeps .9; b decays to .8·(1−9/11), d to .6·(1−1/3); c .7 next; then d, whose overlap 6/14 decays b again
    b_score = 0.8 * (1 - 9 / 11) * (1 - 6 / 14)
    assert keep.tolist() == [0, 2, 3, 1]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.4, b_score], dtype=torch.float64))
    keep, _ = soft_nms(SEGMENTS, SCORES, iou_threshold=0.3, method="linear", min_score=0.1)
    assert keep.tolist() == [0, 2, 3]  # b fell below min_score


def test_gaussian_soft_nms():
    sigma = 0.5
    keep, scores = soft_nms(SEGMENTS, SCORES, sigma=sigma, method="gaussian", min_score=0.001)
    d_score = 0.6 * math.exp(-(1 / 3) ** 2 / sigma)
    b_score = 0.8 * math.exp(-(9 / 11) ** 2 / sigma) * math.exp(-(6 / 14) ** 2 / sigma)
    assert keep.tolist() == [0, 2, 3, 1]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, d_score, b_score], dtype=torch.float64))


def test_class_aware_versus_class_agnostic():
    segments = torch.tensor([[0.0, 10.0], [1.0, 11.0]])
    scores, labels = torch.tensor([0.9, 0.8]), torch.tensor([0, 1])
    aware = postprocess_detections(segments, scores, labels, PostprocessConfig(nms_method="hard", iou_threshold=0.5, voting_threshold=None))
    agnostic = postprocess_detections(segments, scores, labels, PostprocessConfig(nms_method="hard", iou_threshold=0.5, voting_threshold=None, class_aware=False))
    assert aware["labels"].tolist() == [0, 1]
    assert agnostic["labels"].tolist() == [0] and agnostic["scores"].tolist() == [pytest.approx(0.9)]


def test_segment_voting():
    # [0,10] is voted by itself (.9) and b (.8, tIoU .82 ≥ .7); d (tIoU 1/3) does not vote
    voted = segment_voting(SEGMENTS[:1], SEGMENTS, SCORES, iou_threshold=0.7)
    torch.testing.assert_close(voted, torch.tensor([[0.8 / 1.7, (9 + 8.8) / 1.7]], dtype=torch.float64))
    # through the full pipeline: hard NMS at 0.5 keeps a, c, d; a's boundaries are refined, c and d vote alone
    out = postprocess_detections(SEGMENTS, SCORES, torch.zeros(4, dtype=torch.long),
                                 PostprocessConfig(nms_method="hard", iou_threshold=0.5, voting_threshold=0.7))
    torch.testing.assert_close(out["segments"], torch.tensor([[0.8 / 1.7, 17.8 / 1.7], [20, 30], [5, 15]], dtype=torch.float64))


def test_max_segments_and_ordering():
    segments = torch.tensor([[float(10 * i), float(10 * i + 5)] for i in range(6)])
    scores = torch.tensor([0.1, 0.6, 0.3, 0.9, 0.5, 0.2])
    out = postprocess_detections(segments, scores, torch.tensor([0, 1, 0, 1, 0, 1]),
                                 PostprocessConfig(max_segments=3, voting_threshold=None))
    assert out["scores"].tolist() == [pytest.approx(0.9), pytest.approx(0.6), pytest.approx(0.5)]
    torch.testing.assert_close(out["segments"], segments[[3, 1, 4]])


def test_detections_to_seconds_maps_through_the_grid_and_clips():
    grid = TemporalGrid(step_s=0.5, offset_s=0.25)  # position p ↔ 0.25 + 0.5 p seconds
    detections = {"segments": torch.tensor([[0.0, 10.0], [-2.0, 3.0], [50.0, 60.0]]),
                  "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([2, 1, 0])}
    out = detections_to_seconds(detections, grid, duration=20.0)
    # [0.25, 5.25]; [-0.75, 1.75] → [0, 1.75]; [25.25, 30.25] lies past the end → dropped
    torch.testing.assert_close(out["segments"], torch.tensor([[0.25, 5.25], [0.0, 1.75]], dtype=torch.float64))
    assert out["scores"].tolist() == [pytest.approx(0.9), pytest.approx(0.8)] and out["labels"].tolist() == [2, 1]
    unclipped = detections_to_seconds(detections, grid, duration=None)
    assert unclipped["segments"][2].tolist() == [25.25, 30.25]


def test_fuse_video_classifier():
    detections = {"segments": torch.tensor([[0.0, 1.0], [2.0, 3.0]]), "scores": torch.tensor([0.81, 0.25])}
    fused = fuse_video_classifier(detections, torch.tensor([0.1, 0.64, 0.36]), top_k=2)
    # classes 1 (.64) and 2 (.36): √(.64·.81)=.72, √(.36·.81)=.54, √(.64·.25)=.4, √(.36·.25)=.3
    torch.testing.assert_close(fused["scores"], torch.tensor([0.72, 0.54, 0.4, 0.3], dtype=torch.float64), atol=1e-6, rtol=0)
    assert fused["labels"].tolist() == [1, 2, 1, 2]
    assert fused["segments"].tolist() == [[0, 1], [0, 1], [2, 3], [2, 3]]


def test_load_video_classifier_scores(tmp_path):
    path = tmp_path / "cls.json"
    path.write_text(json.dumps({"class": ["b", "a"], "results": {"vid": [0.2, 0.7]}}))
    torch.testing.assert_close(load_video_classifier_scores(path, ["a", "b", "c"])["vid"], torch.tensor([0.7, 0.2, 0.0], dtype=torch.float64))
    by_name = load_video_classifier_scores({"vid": {"c": 0.5}}, ["a", "b", "c"])
    assert by_name["vid"].tolist() == [0, 0, 0.5]
    with pytest.raises(ValueError, match="'vid'.*'zzz'"):
        load_video_classifier_scores({"vid": {"zzz": 0.5}}, ["a"])
    with pytest.raises(ValueError, match=r"results\['v2'\]"):
        load_video_classifier_scores({"classes": ["a"], "results": {"v2": [0.1, 0.2]}}, ["a"])


def test_config_validation():
    with pytest.raises(ValueError, match="nms_method"):
        PostprocessConfig(nms_method="soft")


@pytest.mark.parametrize("method", ["hard", "gaussian"])
def test_the_per_video_cap_equals_truncating_the_uncapped_result(method):
    # NMS stops early once a class cannot reach the top max_segments; that must not change the outcome
    generator = torch.Generator().manual_seed(0)
    starts = torch.rand(400, generator=generator) * 100
    segments = torch.stack([starts, starts + 1 + torch.rand(400, generator=generator) * 10], dim=1)
    scores = torch.rand(400, generator=generator)
    labels = torch.randint(0, 5, (400,), generator=generator)
    base = dict(nms_method=method, iou_threshold=0.5, voting_threshold=0.7)
    capped = postprocess_detections(segments, scores, labels, PostprocessConfig(max_segments=25, **base))
    full = postprocess_detections(segments, scores, labels, PostprocessConfig(max_segments=10_000, **base))
    assert full["scores"].numel() > 100
    for key in ("segments", "scores", "labels"):
        torch.testing.assert_close(capped[key], full[key][:25])
