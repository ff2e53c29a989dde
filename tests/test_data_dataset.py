"""VideoTALDataset / FeatureTALDataset / collate_tal / build_loader."""

import logging

import numpy as np
import pytest
import torch
from data_fixtures import counter_video, frame_index_of, tiny_synthetic  # noqa: F401 - fixture

from revtal.data.annotations import AnnotationSet, VideoAnnotation, load_annotations
from revtal.data.dataset import (
    EpochSampler,
    FeatureFileError,
    FeatureTALDataset,
    VideoTALDataset,
    build_loader,
    choose_window,
    collate_tal,
)
from revtal.data.decoding import VideoDecodeError
from revtal.data.timeline import TemporalGrid, grid_for_frames, grid_for_snippets

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # eval transform then leaves pixels in [0, 1]


def _identity(video, generator=None):
    return video


def _coloured(video_cthw: torch.Tensor) -> np.ndarray:
    """Per time step: does any pixel have saturated colour (the synthetic actions; the background is grey)?"""
    chroma = video_cthw.max(dim=0).values - video_cthw.min(dim=0).values
    return (chroma > 40 / 255).flatten(1).sum(1).numpy() > 0


def _inside(times: np.ndarray, segments) -> np.ndarray:
    inside = np.zeros(len(times), dtype=bool)
    for start, end in np.asarray(segments).reshape(-1, 2):
        inside |= (times > start) & (times < end)
    return inside


def _counter_set(tmp_path, durations=(3.0,), segments=((0.5, 1.5),)):
    """Counter videos (frame k has grey level 10k, 8 fps) with one 'act' instance each."""
    videos = {}
    for i, (duration, seg) in enumerate(zip(durations, segments)):
        vid = f"c{i}"
        counter_video(tmp_path / "videos" / f"{vid}.mp4", num_frames=int(duration * 8), fps=8.0)
        videos[vid] = VideoAnnotation(vid, "training", duration, np.array([seg]), np.array([0]), fps=8.0)
    return AnnotationSet(classes=["act"], videos=videos), tmp_path / "videos"


def test_frames_mode_whole_video_agrees_with_annotations(tiny_synthetic):
    ann = load_annotations(tiny_synthetic / "annotations.json")
    ds = VideoTALDataset(ann, tiny_synthetic / "videos", "training", num_frames=24, img_size=32, **IDENTITY)
    assert ds.video_ids == list(ann.subset("training").videos)
    for i, vid in enumerate(ds.video_ids):
        item = ds[i]
        video = ann.videos[vid]
        assert item["video"].shape == (3, 24, 32, 32) and item["video"].dtype == torch.float32
        assert item["frame_mask"].dtype == torch.bool and item["frame_mask"].all()
        assert item["grid"] == grid_for_frames(video.duration, 24)
        assert item["video_id"] == vid and item["duration"] == video.duration and item["skipped"] == []
        torch.testing.assert_close(item["segments"], torch.tensor(video.segments, dtype=torch.float32))
        assert item["labels"].dtype == torch.int64 and item["labels"].tolist() == video.labels.tolist()
        # grid position -> seconds: the frame shown there is coloured exactly when that time is inside an action
        times = item["grid"].to_seconds(np.arange(24))
        np.testing.assert_array_equal(_coloured(item["video"]), _inside(times, video.segments))


def test_training_windows_at_fps_clip_segments_and_keep_time_alignment(tiny_synthetic):
    ann = load_annotations(tiny_synthetic / "annotations.json")
    ds = VideoTALDataset(ann, tiny_synthetic / "videos", "training", num_frames=None, fps=4.0, window=16,
                         img_size=32, train=True, transform=_identity, seed=1)
    starts = set()
    for epoch in range(3):
        for i, vid in enumerate(ds.video_ids):
            item = ds[(i, epoch)]
            video = ann.videos[vid]
            assert item["video"].shape == (3, 16, 32, 32) and item["frame_mask"].all()  # every video > 4 s
            grid = item["grid"]
            assert grid.step_s == 0.25
            start = (grid.offset_s - 0.125) / 0.25
            assert start == round(start) and 0 <= start <= video.duration * 4 - 16
            starts.add((vid, start))
            lo, hi = start / 4, (start + 16) / 4
            segs = item["segments"].numpy()
            assert np.all(segs[:, 0] >= lo) and np.all(segs[:, 1] <= hi) and np.all(segs[:, 1] > segs[:, 0])
            times = grid.to_seconds(np.arange(16))
            np.testing.assert_array_equal(_coloured(item["video"]), _inside(times, video.segments))
            np.testing.assert_array_equal(_inside(times, segs), _inside(times, video.segments))
            # same (index, epoch) -> same item
            assert torch.equal(ds[(i, epoch)]["video"], item["video"])
    assert len(starts) > len(ds.video_ids)  # windows move between epochs


def test_choose_window_prefers_windows_keeping_an_action():
    grid = TemporalGrid(1.0, 0.5)  # position i covers [i, i + 1) seconds
    segments = np.array([[90.0, 100.0]])
    for seed in range(20):
        start = choose_window(100, 20, grid, segments, np.random.default_rng(seed), trunc_thresh=0.5)
        assert start + 20 >= 95  # at least half of [90, 100] inside [start, start + 20)
    assert choose_window(10, 20, grid, segments, np.random.default_rng(0)) == 0


def test_short_video_padding_and_evenly_sampled_repeats(tmp_path):
    ann, video_dir = _counter_set(tmp_path, durations=(3.0, 2.0), segments=((0.5, 1.5), (1.0, 2.0)))
    padded = VideoTALDataset(ann, video_dir, None, fps=8.0, num_frames=None, window=32, img_size=32,
                             train=True, transform=_identity)
    item = padded[0]  # 24 frames in a 32-frame window
    assert item["video"].shape == (3, 32, 32, 32)
    assert item["frame_mask"].tolist() == [True] * 24 + [False] * 8
    assert torch.all(item["video"][:, 24:] == 0)
    assert frame_index_of((item["video"][:, :24].permute(1, 2, 3, 0) * 255).numpy()).tolist() == list(range(24))
    repeated = VideoTALDataset(ann, video_dir, None, num_frames=40, img_size=32, **IDENTITY)[1]  # 16 frames -> 40
    index = frame_index_of((repeated["video"].permute(1, 2, 3, 0) * 255).numpy())
    times = grid_for_frames(2.0, 40).to_seconds(np.arange(40))
    np.testing.assert_array_equal(index, np.floor(times * 8).astype(int))
    assert repeated["frame_mask"].all()


def test_snippets_mode_clips_grid_and_frame_content(tmp_path):
    ann, video_dir = _counter_set(tmp_path)  # 24 frames at 8 fps
    ds = VideoTALDataset(ann, video_dir, None, mode="snippets", clip_frames=4, clip_stride=3, img_size=32, **IDENTITY)
    item = ds[0]
    # clips start at 0, 3, ..., 21: 1 + ceil((24 - 4) / 3) = 8 clips, the last one padded with frame 23
    assert item["video"].shape == (8, 3, 4, 32, 32) and item["frame_mask"].all()
    shown = frame_index_of((item["video"].permute(0, 2, 3, 4, 1) * 255).reshape(32, 32, 32, 3).numpy()).reshape(8, 4)
    expected = np.minimum(np.arange(8)[:, None] * 3 + np.arange(4), 23)
    np.testing.assert_array_equal(shown, expected)
    assert item["grid"] == grid_for_snippets(8.0, 3, 4)
    np.testing.assert_allclose(item["grid"].to_seconds(np.arange(8)), (np.arange(8) * 3 + 2) / 8)
    # re-sampled at 4 fps: frame k of the 4 fps sequence is the 8 fps frame on screen at (k + 0.5) / 4
    slow = VideoTALDataset(ann, video_dir, None, mode="snippets", fps=4.0, clip_frames=2, clip_stride=2, img_size=32,
                           **IDENTITY)[0]
    shown = frame_index_of((slow["video"].permute(0, 2, 3, 4, 1) * 255).reshape(-1, 32, 32, 3).numpy())
    np.testing.assert_array_equal(shown, np.arange(12) * 2 + 1)
    # training windows count clips
    windowed = VideoTALDataset(ann, video_dir, None, mode="snippets", clip_frames=4, clip_stride=3, img_size=32,
                               window=5, train=True, transform=_identity)[0]
    assert windowed["video"].shape == (5, 3, 4, 32, 32)


def test_missing_and_corrupt_videos_error_or_skip_with_count(tmp_path, caplog):
    ann, video_dir = _counter_set(tmp_path, durations=(3.0, 3.0, 3.0), segments=((0.5, 1.5),) * 3)
    (video_dir / "c1.mp4").write_bytes(b"broken" * 100)
    ann.videos["gone"] = VideoAnnotation("gone", "training", 3.0, np.array([[0.5, 1.0]]), np.array([0]))
    with pytest.raises(FileNotFoundError, match="gone"):
        VideoTALDataset(ann, video_dir, None, num_frames=4, img_size=32)
    del ann.videos["gone"]
    strict = VideoTALDataset(ann, video_dir, None, num_frames=4, img_size=32)
    with pytest.raises(VideoDecodeError, match="c1.mp4"):
        strict[1]
    ann.videos["gone"] = VideoAnnotation("gone", "training", 3.0, np.array([[0.5, 1.0]]), np.array([0]))
    with caplog.at_level(logging.WARNING, logger="revtal.data.dataset"):
        lenient = VideoTALDataset(ann, video_dir, None, num_frames=4, img_size=32, skip_bad_videos=True)
        assert lenient.video_ids == ["c0", "c1", "c2"]
        item = lenient[1]  # c1 is corrupt: replaced by the next good video
        assert item["video_id"] == "c2" and item["skipped"] == ["c1"]
        assert lenient.report_skipped() == 2
    assert "c1.mp4" in caplog.text and "skipped 2 of 4 videos" in caplog.text
    # with worker processes the skips travel in the batches
    loader = build_loader(VideoTALDataset(ann, video_dir, None, num_frames=4, img_size=32, skip_bad_videos=True),
                          batch_size=3, shuffle=False, num_workers=1, seed=0)
    batch = next(iter(loader))
    assert batch["video_id"] == ["c0", "c2", "c2"] and batch["skipped"] == ["c1"]


def test_videos_without_annotations_and_skipped_videos_are_summarised(tmp_path, caplog):
    ann, video_dir = _counter_set(tmp_path, durations=(3.0, 3.0, 3.0), segments=((0.5, 1.5),) * 3)
    ann.videos["c2"].segments, ann.videos["c2"].labels = np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    (video_dir / "c1.mp4").write_bytes(b"broken" * 100)
    with caplog.at_level(logging.WARNING, logger="revtal.data.dataset"):
        train = VideoTALDataset(ann, video_dir, None, num_frames=4, img_size=32, train=True, skip_bad_videos=True)
    assert "leaving out 1 of 3 videos" in caplog.text and "no annotations: c2" in caplog.text
    assert train.video_ids == ["c0", "c1"]
    assert train.usage_summary() == "used 2 of 3 videos: left out 1 without annotations (c2)"
    train[1]  # c1 is corrupt: skipped
    assert train.usage_summary() == ("used 1 of 3 videos: skipped 1 unreadable or missing (c1); "
                                     "left out 1 without annotations (c2)")
    assert train.usage_summary(also_skipped=["c0"]).startswith("used 0 of 3 videos: skipped 2")
    evaluation = VideoTALDataset(ann, video_dir, None, num_frames=4, img_size=32, skip_bad_videos=True)
    assert evaluation.video_ids == ["c0", "c1", "c2"] and evaluation.usage_summary() is None  # kept for scoring


def test_collate_pads_to_the_batch_max():
    items = [
        {"video": torch.ones(3, t, 2, 2), "frame_mask": torch.ones(t, dtype=torch.bool),
         "segments": torch.zeros(n, 2), "labels": torch.zeros(n, dtype=torch.int64), "video_id": f"v{t}",
         "duration": float(t), "grid": TemporalGrid(1.0), "skipped": [f"s{t}"] * (t == 5)}
        for t, n in ((5, 1), (3, 2))
    ]
    batch = collate_tal(items)
    assert batch["video"].shape == (2, 3, 5, 2, 2)
    assert batch["frame_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert torch.all(batch["video"][1, :, 3:] == 0) and torch.all(batch["video"][1, :, :3] == 1)
    assert [s.shape for s in batch["segments"]] == [(1, 2), (2, 2)]
    assert batch["video_id"] == ["v5", "v3"] and batch["duration"].dtype == torch.float64
    assert batch["skipped"] == ["s5"] and batch["grid"] == [TemporalGrid(1.0)] * 2
    assert collate_tal(items, pad_multiple=4)["video"].shape[2] == 8
    snippets = [{"video": torch.ones(t, 3, 4, 2, 2), "frame_mask": torch.ones(t, dtype=torch.bool)} for t in (2, 4)]
    batch = collate_tal(snippets)
    assert batch["video"].shape == (2, 4, 3, 4, 2, 2) and batch["frame_mask"][0].tolist() == [True, True, False, False]


def test_loader_is_deterministic_and_independent_of_workers(tiny_synthetic):
    ann = load_annotations(tiny_synthetic / "annotations.json")

    def run(num_workers, epochs=2):
        ds = VideoTALDataset(ann, tiny_synthetic / "videos", "training", num_frames=8, img_size=24, train=True,
                             window=6, seed=4)
        loader = build_loader(ds, batch_size=2, shuffle=True, num_workers=num_workers, seed=7)
        return [[(b["video_id"], b["video"]) for b in loader] for _ in range(epochs)]

    first, again, workers = run(0), run(0), run(2)
    for a, b, c in zip(first, again, workers):
        for (ids_a, va), (ids_b, vb), (ids_c, vc) in zip(a, b, c):
            assert ids_a == ids_b == ids_c
            assert torch.equal(va, vb) and torch.equal(va, vc)
            assert va.shape[2] == 6  # window of the 8 evenly sampled frames
    # the epoch advances between passes: new order and/or new augmentation
    assert [i for ids, _ in first[0] for i in ids] != [i for ids, _ in first[1] for i in ids] or not all(
        torch.equal(x, y) for (_, x), (_, y) in zip(first[0], first[1])
    )


def test_epoch_sampler_set_epoch_and_shards():
    data = list(range(10))
    sampler = EpochSampler(data, shuffle=True, seed=3)
    one, two = list(sampler), list(sampler)
    assert sorted(one) == data and one != two  # advanced by itself
    sampler.set_epoch(0)
    assert list(sampler) == one  # an explicit epoch reproduces that epoch
    shards = [list(EpochSampler(data, shuffle=True, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == data
    with pytest.raises(RuntimeError, match="process group"):
        build_loader(data, batch_size=2, shuffle=True, num_workers=0, seed=0, distributed=True)


def test_feature_dataset_grid_layout_window_and_bad_files(tmp_path):
    ann = AnnotationSet(classes=["a"], videos={
        "f0": VideoAnnotation("f0", "validation", 10.0, np.array([[2.0, 4.0]]), np.array([0])),
        "f1": VideoAnnotation("f1", "validation", 10.0, np.array([[6.0, 9.0]]), np.array([0])),
    })
    features = np.arange(4 * 20, dtype=np.float32).reshape(4, 20)
    np.save(tmp_path / "f0.npy", features)
    np.save(tmp_path / "v_f1.npy", features.T.copy())  # ActivityNet-style v_ prefix, (T, C) layout
    ds = FeatureTALDataset(tmp_path, ann, "validation")
    item = ds[0]
    assert item["features"].shape == (4, 20) and item["mask"].all()
    assert item["grid"] == grid_for_frames(10.0, 20)  # 20 features over 10 s: feature i at 0.25 + 0.5 i
    torch.testing.assert_close(item["features"], torch.from_numpy(features))
    tc = FeatureTALDataset(tmp_path, ann, None, layout="TC")
    torch.testing.assert_close(tc[1]["features"], torch.from_numpy(features))
    snippets = FeatureTALDataset(tmp_path, ann, None, fps=30.0, stride_frames=4, clip_frames=16)
    assert snippets[0]["grid"] == grid_for_snippets(30.0, 4, 16)
    windowed = FeatureTALDataset(tmp_path, ann, None, train=True, window=8, seed=1)
    item = windowed[0]
    start = int(round((item["grid"].offset_s - 0.25) / 0.5))
    torch.testing.assert_close(item["features"], torch.from_numpy(features[:, start : start + 8]))
    assert np.all(item["segments"].numpy() >= start * 0.5) and np.all(item["segments"].numpy() <= (start + 8) * 0.5)
    (tmp_path / "f0.npy").write_bytes(b"garbage")
    with pytest.raises(FeatureFileError, match="f0.npy"):
        ds[0]


def test_a_video_far_from_its_annotated_duration_is_named_once_with_both_values(tmp_path, caplog):
    # files of 3 s and 2 s (24 and 16 frames at 8 fps); the first is annotated 30 s long, the second 2.05 s (2.5 %)
    ann, video_dir = _counter_set(tmp_path, durations=(3.0, 2.0), segments=((0.5, 1.5), (1.0, 2.0)))
    ann.videos["c0"].duration, ann.videos["c1"].duration = 30.0, 2.05
    dataset = VideoTALDataset(ann, video_dir, None, num_frames=8, img_size=32, **IDENTITY)
    with caplog.at_level(logging.WARNING, logger="revtal.data.dataset"):
        dataset[0], dataset[0], dataset[1]
    warnings = [r.getMessage() for r in caplog.records if "decodes to" in r.getMessage()]
    assert len(warnings) == 1 and "annotated duration 30 s" in warnings[0] and "decodes to 3 s" in warnings[0]
