"""Focal and DIoU losses against hand values; label assignment (centre sampling, regression ranges, shortest wins)."""

from __future__ import annotations

import math

import pytest
import torch

from revtal.localizers.losses import assign_labels, diou_loss_1d, make_points, sigmoid_focal_loss


def test_focal_loss_hand_values():
    ln2 = math.log(2)
    # logit 0 (p = 1/2): positive → α (1/2)² ln2, negative → (1-α) (1/2)² ln2
    assert float(sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0]))) == pytest.approx(0.25 * 0.25 * ln2)
    assert float(sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([0.0]))) == pytest.approx(0.75 * 0.25 * ln2)
    # logit ln 3 (p = 3/4), positive: 0.25 · (1/4)² · (−ln 3/4)
    value = sigmoid_focal_loss(torch.tensor([math.log(3)]), torch.tensor([1.0]))
    assert float(value) == pytest.approx(0.25 * 0.0625 * -math.log(0.75), rel=1e-6)
    # γ = 0 and no α: plain binary cross-entropy, summed
    logits, targets = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1.0, 0.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    assert float(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0)) == pytest.approx(float(bce), rel=1e-6)


def test_diou_loss_hand_values():
    # identical segments → 0
    assert float(diou_loss_1d(torch.tensor([[2.0, 2.0]]), torch.tensor([[2.0, 2.0]]))) == pytest.approx(0.0, abs=1e-7)
    # around point 0: predicted [-1, 3] vs target [-2, 2]: IoU 3/5, centres 1 apart, enclosing length 5
    assert float(diou_loss_1d(torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 2.0]]))) == pytest.approx(1 - 0.6 + 1 / 25)
    # predicted [-1, 1] vs target [-4, 4]: IoU 2/8, same centre → 1 - 1/4
    assert float(diou_loss_1d(torch.tensor([[1.0, 1.0]]), torch.tensor([[4.0, 4.0]]))) == pytest.approx(0.75)
    # gradient flows to the prediction
    pred = torch.tensor([[1.0, 3.0]], requires_grad=True)
    diou_loss_1d(pred, torch.tensor([[2.0, 2.0]])).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def two_level_points():
    # T = 8: level 0 (stride 1) points at 0..7, level 1 (stride 2) at 0, 2, 4, 6
    return torch.cat(make_points([8, 4], [1, 2], [(0, 4), (4, math.inf)]))


def test_points_table():
    points = two_level_points()
    assert points[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 4, 6]
    assert points[:, 3].tolist() == [1] * 8 + [2] * 4
    assert points[8, 1] == 4 and math.isinf(points[8, 2])


def test_assignment_centre_sampling_and_regression_ranges():
    points = two_level_points()
    cls, reg = assign_labels(points, torch.tensor([[2.0, 5.0]]), torch.tensor([1]), num_classes=2, center_radius=1.5)
    # centre 3.5 ± 1.5 strides (level 0) = [2, 5]: points strictly inside, 3 and 4 (2 and 5 sit on the edges, which
    # are negative as in the reference), largest distance ≤ 3 → level 0 only
    positive = cls.sum(dim=1) > 0
    assert torch.nonzero(positive).flatten().tolist() == [3, 4]
    assert cls[positive, 1].tolist() == [1, 1] and cls[:, 0].sum() == 0
    assert reg[3:5].tolist() == [[1, 2], [2, 1]]
    assert reg[~positive].abs().sum() == 0

    # a small radius keeps only the points within 0.6 stride of the centre 3.5; at 0.5 both sit on the edges
    cls, _ = assign_labels(points, torch.tensor([[2.0, 5.0]]), torch.tensor([1]), num_classes=2, center_radius=0.6)
    assert torch.nonzero(cls.sum(dim=1)).flatten().tolist() == [3, 4]
    cls, _ = assign_labels(points, torch.tensor([[2.0, 5.0]]), torch.tensor([1]), num_classes=2, center_radius=0.5)
    assert cls.sum() == 0


def test_assignment_shortest_action_wins_and_long_actions_go_coarse():
    points = two_level_points()
    segments = torch.tensor([[2.0, 5.0], [0.0, 7.0]])  # lengths 3 (class 1) and 7 (class 0)
    cls, reg = assign_labels(points, segments, torch.tensor([1, 0]), num_classes=2, center_radius=1.5)
    # points 3 and 4 qualify for both (the long one reaches distance exactly 4): the short action wins
    assert cls[3].tolist() == [0, 1] and cls[4].tolist() == [0, 1]
    assert reg[3].tolist() == [1, 2] and reg[4].tolist() == [2, 1]
    # level 1 (stride 2, range ≥ 4) gets the long action on its centre region [0.5, 6.5]; targets in strides
    assert cls[8:, 0].tolist() == [0, 1, 1, 1] and cls[8:, 1].sum() == 0
    assert reg[9:].tolist() == [[1.0, 2.5], [2.0, 1.5], [3.0, 0.5]]


def test_assignment_equal_lengths_give_multi_label_targets_and_empty_video():
    points = two_level_points()
    cls, _ = assign_labels(points, torch.tensor([[2.0, 5.0], [2.0, 5.0]]), torch.tensor([0, 1]), num_classes=2)
    assert cls[3].tolist() == [1, 1]
    cls, reg = assign_labels(points, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), num_classes=2)
    assert cls.shape == (12, 2) and cls.sum() == 0 and reg.sum() == 0
    with pytest.raises(ValueError, match="labels"):
        assign_labels(points, torch.tensor([[2.0, 5.0]]), torch.tensor([2]), num_classes=2)
