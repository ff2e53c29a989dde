"""Training crops: lengths, ground truth cut and re-timed, determinism, and off at evaluation."""

import numpy as np
import pytest
import torch

from revtal.data.annotations import AnnotationSet, VideoAnnotation
from revtal.data.crop import TemporalCrop, clip_segments
from revtal.data.dataset import FeatureTALDataset
from revtal.data.timeline import TemporalGrid

def _feature_set(tmp_path, length=100, segments=((10.0, 30.0), (50.0, 54.0), (80.0, 99.0))):
    segs = np.array(segments, dtype=np.float64)
    ann = AnnotationSet(classes=["a", "b", "c"], videos={
        "v": VideoAnnotation("v", "training", float(length), segs, np.arange(len(segs)) % 3),
    })
    # feature value = position, so a crop's start can be read off its first feature
    np.save(tmp_path / "v.npy", np.tile(np.arange(length, dtype=np.float32), (2, 1)))
    return ann


def test_crop_lengths_follow_the_ratio_and_the_window():
    rng = np.random.default_rng(0)
    crop = TemporalCrop(ratio=(0.9, 1.0))
    lengths = {crop.crop_length(200, rng) for _ in range(300)}
    assert lengths == set(range(180, 201))  # round(0.9 * 200) .. 200, every length reachable
    assert TemporalCrop(window=64, ratio=(0.5, 0.5)).crop_length(100, rng) == 64  # longer than the window: cut to it
    assert TemporalCrop(window=64, ratio=(0.5, 0.5)).crop_length(40, rng) == 20
    assert TemporalCrop(ratio=(1.0, 1.0)).crop_length(37, rng) == 37
    assert TemporalCrop().crop_length(37, rng) == 37
    with pytest.raises(ValueError, match="crop ratio"):
        TemporalCrop(ratio=(0.9, 0.5))
    with pytest.raises(ValueError, match="window"):
        TemporalCrop(window=0)


def test_clip_segments_clips_drops_short_remainders_and_keeps_one_when_all_would_go():
    segments = np.array([[0.0, 10.0], [8.0, 12.0], [19.0, 30.0], [40.0, 41.0]])
    labels = np.array([0, 1, 2, 3])
    kept, kept_labels = clip_segments(segments, labels, 5.0, 20.0, trunc_thresh=0.5)
    # [0, 10] keeps 5/10, [8, 12] all of it, [19, 30] 1/11 (dropped), [40, 41] nothing (dropped)
    np.testing.assert_array_equal(kept, [[5.0, 10.0], [8.0, 12.0]])
    assert kept_labels.tolist() == [0, 1]
    # a crop inside one long action: its best-covered overlap stays rather than an item without actions
    kept, kept_labels = clip_segments(segments, labels, 2.0, 4.0, trunc_thresh=0.5)
    np.testing.assert_array_equal(kept, [[2.0, 4.0]])
    assert kept_labels.tolist() == [0]


def test_feature_crop_cuts_and_retimes_ground_truth(tmp_path):
    ann = _feature_set(tmp_path)
    ds = FeatureTALDataset(tmp_path, ann, None, train=True, crop_ratio=(0.5, 0.7), trunc_thresh=0.5,
                           fps=1.0, seed=3)
    video = ann.videos["v"]
    starts, lengths = set(), set()
    for epoch in range(40):
        item = ds[(0, epoch)]
        count = int(item["mask"].sum())
        assert item["features"].shape == (2, count) and 50 <= count <= 70
        start = int(item["features"][0, 0])
        torch.testing.assert_close(item["features"][0], torch.arange(start, start + count, dtype=torch.float32))
        # the item's grid starts at the crop: its position 0 is the sequence's position `start`
        assert item["grid"].to_seconds(0) == pytest.approx(start + 0.5)
        lo, hi = start, start + count
        segs, labels = item["segments"].numpy(), item["labels"].numpy()
        assert len(segs) >= 1  # never a crop without an action
        assert np.all(segs[:, 0] >= lo) and np.all(segs[:, 1] <= hi)
        for (a, b), label in zip(segs, labels):
            original = video.segments[video.labels == label][0]
            np.testing.assert_allclose([a, b], [max(original[0], lo), min(original[1], hi)])
            assert (b - a) >= 0.5 * (original[1] - original[0]) - 1e-6 or len(segs) == 1
        # every action keeping at least half its length is there
        fraction = (np.minimum(video.segments[:, 1], hi) - np.maximum(video.segments[:, 0], lo)) / np.diff(video.segments)[:, 0]
        assert set(labels.tolist()) >= set(video.labels[fraction >= 0.5].tolist())
        starts.add(start)
        lengths.add(count)
    assert len(starts) > 5 and len(lengths) > 5


def test_crop_is_deterministic_given_the_seed_and_changes_with_it(tmp_path):
    ann = _feature_set(tmp_path)

    def items(seed):
        ds = FeatureTALDataset(tmp_path, ann, None, train=True, crop_ratio=(0.3, 0.9), fps=1.0, seed=seed)
        return [(ds[(0, e)]["features"], ds[(0, e)]["segments"]) for e in range(8)]

    first, again, other = items(1), items(1), items(2)
    for (fa, sa), (fb, sb) in zip(first, again):
        assert torch.equal(fa, fb) and torch.equal(sa, sb)
    assert any(fa.shape != fc.shape or not torch.equal(fa, fc) for (fa, _), (fc, _) in zip(first, other))


def test_window_pads_every_training_item_and_evaluation_is_never_cropped(tmp_path):
    ann = _feature_set(tmp_path)
    ds = FeatureTALDataset(tmp_path, ann, None, train=True, crop_ratio=(0.9, 1.0), window=128, fps=1.0, seed=0)
    item = ds[0]
    count = int(item["mask"].sum())
    assert item["features"].shape == (2, 128) and 90 <= count <= 100
    assert not item["mask"][count:].any() and torch.all(item["features"][:, count:] == 0)
    cut = FeatureTALDataset(tmp_path, ann, None, train=True, window=32, fps=1.0, seed=0)[0]
    assert cut["features"].shape == (2, 32) and cut["mask"].all()
    evaluation = FeatureTALDataset(tmp_path, ann, None, train=False, crop_ratio=(0.3, 0.5), window=32, fps=1.0)
    whole = evaluation[0]
    assert whole["features"].shape == (2, 100) and whole["mask"].all()
    torch.testing.assert_close(whole["segments"], torch.as_tensor(ann.videos["v"].segments, dtype=torch.float32))
    assert whole["grid"] == TemporalGrid(1.0, 0.5)


def test_feature_training_uses_the_thumos_crop_by_default(tmp_path):
    from revtal.engine.config import ConfigError, load_config
    from revtal.engine.datasets import build_datasets

    ann = _feature_set(tmp_path)
    features = [f"data.features_dir={tmp_path}", "backbone.mode=frozen", "data.train_subset=training",
                "data.val_subset=training"]
    train_set, val_set = build_datasets(load_config(None, features), ann)
    assert train_set.crop == TemporalCrop(None, (0.9, 1.0), 0.5) and train_set.train and not val_set.train
    off = load_config(None, [*features, "data.crop_ratio=[1, 1]"])
    assert build_datasets(off, ann)[0][(0, 0)]["features"].shape == (2, 100)
    with pytest.raises(ConfigError, match="data.crop_ratio"):
        load_config(None, ["data.crop_ratio=[0.9]"])
