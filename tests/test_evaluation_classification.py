"""Top-k and per-class accuracy on cases worked out by hand."""

import math

import pytest
import torch

from revtal.evaluation.classification import average_views, classification_metrics


def test_top1_top5_and_per_class_accuracy_by_hand():
    # 4 videos, 6 classes. Ranks of the true class: video 0 first, video 1 second, video 2 sixth, video 3 first.
    scores = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],   # label 0: top-1
        [0.5, 0.4, 0.1, 0.0, 0.0, 0.0],   # label 1: rank 2 -> top-5 only
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],   # label 5: rank 6 -> missed by top-5
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],   # label 5: top-1
    ])
    labels = torch.tensor([0, 1, 5, 5])
    m = classification_metrics(scores, labels, 6)
    assert m["top1"] == pytest.approx(2 / 4) and m["top5"] == pytest.approx(3 / 4)
    assert m["per_class"] == [1.0, 0.0, None, None, None, 0.5]
    assert m["mean_class_accuracy"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)  # classes without videos left out
    assert m["num_classes"] == 6 and m["num_videos"] == 4


def test_top5_with_fewer_than_five_classes_counts_every_video():
    m = classification_metrics(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([0, 0]), 2)
    assert m["top1"] == 0.5 and m["top5"] == 1.0


def test_views_are_averaged_as_probabilities():
    # view 0 is confident in class 0, view 1 mildly prefers class 1: the average of softmaxes prefers class 0
    views = torch.tensor([[[10.0, 0.0], [0.0, 1.0]]])
    averaged = average_views(views)
    p0 = (1 / (1 + math.exp(-10)) + 1 / (1 + math.e)) / 2
    assert averaged[0, 0].item() == pytest.approx(p0) and averaged.sum().item() == pytest.approx(1.0)


def test_mismatched_scores_and_labels_are_rejected():
    with pytest.raises(ValueError, match="labels must be in"):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="do not match"):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0]), 3)
