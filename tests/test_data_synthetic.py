"""The synthetic untrimmed-video dataset: annotations agree with the pixels after encode + decode."""

import json

import numpy as np
import pytest
import torch
from data_fixtures import tiny_synthetic  # noqa: F401 - fixture

from revtal.cli import main as cli_main
from revtal.data.annotations import load_annotations
from revtal.data.decoding import decode_frames, probe_video, sample_timestamps_at_fps
from revtal.data.synthetic import (
    MAX_CLASSES,
    PATTERNS,
    SyntheticClipDataset,
    class_colour,
    class_name,
    class_names,
    class_pattern,
    generate_dataset,
    render_action_clip,
)

# A pixel counts as "coloured" when its channels spread by more than this; the background is grey.
CHROMA_THRESHOLD = 40


def _coloured_pixels(frames: np.ndarray) -> np.ndarray:
    frames = frames.astype(np.int16)
    chroma = frames.max(axis=-1) - frames.min(axis=-1)
    return (chroma > CHROMA_THRESHOLD).sum(axis=(1, 2))


def test_round_trip_pixels_change_exactly_inside_the_segments(tiny_synthetic):
    ann = load_annotations(tiny_synthetic / "annotations.json")
    assert ann.classes == class_names(6)
    assert set(ann.subsets) == {"training", "validation"}
    assert sum(len(v.labels) for v in ann.videos.values()) >= 6
    for video_id, video in ann.videos.items():
        path = tiny_synthetic / "videos" / f"{video_id}.mp4"
        info = probe_video(path)
        assert info.fps == 4.0 and (info.width, info.height) == (32, 32)
        assert info.duration == pytest.approx(video.duration) and info.num_frames == round(video.duration * 4)
        times = sample_timestamps_at_fps(video.duration, 4.0)  # one time per frame, at the frame's centre
        frames, _ = decode_frames(path, times)
        inside = np.zeros(len(times), dtype=bool)
        for start, end in video.segments:
            assert start * 4 == round(start * 4) and end * 4 == round(end * 4)  # frame-aligned boundaries
            inside |= (times > start) & (times < end)
        coloured = _coloured_pixels(frames)
        assert np.all(coloured[~inside] == 0), video_id
        assert np.all(coloured[inside] >= 9), video_id  # at least a 3x3 block even for the smallest square
    labels = np.concatenate([v.labels for v in ann.videos.values()])
    assert labels.min() >= 0 and labels.max() < 6


def test_generation_is_deterministic_by_seed(tmp_path):
    kwargs = dict(num_videos=3, num_classes=4, size=16, fps=4.0, duration_range=(6.0, 9.0), progress=False)
    a = json.loads((generate_dataset(tmp_path / "a", seed=5, **kwargs) / "annotations.json").read_text())
    b = json.loads((generate_dataset(tmp_path / "b", seed=5, **kwargs) / "annotations.json").read_text())
    c = json.loads((generate_dataset(tmp_path / "c", seed=6, **kwargs) / "annotations.json").read_text())
    assert a == b and a["database"] != c["database"]
    frames_a, _ = decode_frames(tmp_path / "a" / "videos" / "synth_00001.mp4", [0.5, 2.5, 4.5])
    frames_b, _ = decode_frames(tmp_path / "b" / "videos" / "synth_00001.mp4", [0.5, 2.5, 4.5])
    np.testing.assert_array_equal(frames_a, frames_b)
    # video i depends on (seed, i) only: more videos keep the first ones
    d = json.loads((generate_dataset(tmp_path / "d", seed=5, **{**kwargs, "num_videos": 4}) / "annotations.json").read_text())
    for vid in ("synth_00000", "synth_00001", "synth_00002"):
        assert d["database"][vid]["annotations"] == a["database"][vid]["annotations"]


def test_generation_writes_bitwise_identical_files(tmp_path):
    # the demo's settings; x264's macroblock-tree rate control used to encode these frames differently from run to
    # run (most of these videos differed within three generations), so every training on them differed too
    kwargs = dict(num_videos=6, num_classes=4, size=32, fps=4.0, duration_range=(16.0, 32.0), progress=False)
    runs = [generate_dataset(tmp_path / str(r), seed=0, **kwargs) for r in range(3)]
    for path in sorted((runs[0] / "videos").glob("*.mp4")):
        contents = {(run / "videos" / path.name).read_bytes() for run in runs}
        assert len(contents) == 1, f"{path.name}: {len(contents)} different encodings of the same frames"


def test_class_design_pairs_share_colour_and_need_time():
    assert class_names(6) == ["red_up", "red_down", "green_blink", "green_steady", "blue_grow", "blue_shrink"]
    names = class_names(MAX_CLASSES)
    assert len(set(names)) == MAX_CLASSES
    for c in range(0, MAX_CLASSES, 2):
        assert class_colour(c) == class_colour(c + 1) and class_pattern(c) != class_pattern(c + 1)
    assert {class_pattern(c) for c in range(6)} == set(PATTERNS)
    with pytest.raises(ValueError, match="num_classes"):
        class_names(MAX_CLASSES + 1)
    with pytest.raises(ValueError, match="class_id"):
        class_name(-1)


def _square_stats(clip: np.ndarray):
    """Per frame: coloured-pixel count, mean row of the coloured pixels, mean brightness of them."""
    frames = clip.astype(np.int16)
    mask = (frames.max(-1) - frames.min(-1)) > CHROMA_THRESHOLD
    counts = mask.sum(axis=(1, 2))
    rows = np.array([np.nonzero(m)[0].mean() for m in mask])
    brightness = np.array([frames[k][m].max(-1).mean() for k, m in enumerate(mask)])
    return counts, rows, brightness


def test_rendered_patterns_move_as_described():
    size, fps, frames = 64, 8.0, 12
    rng = np.random.default_rng(1)
    counts, rows_up, _ = _square_stats(render_action_clip(0, frames, size, rng, fps=fps))
    # 0.2 frame/s at 64 px and 8 fps: 1.6 px per frame upwards (until the square wraps; 12 frames move ~18 px)
    steps = np.diff(rows_up)
    assert np.median(steps) == pytest.approx(-1.6, abs=0.5)
    _, rows_down, _ = _square_stats(render_action_clip(1, frames, size, rng, fps=fps))
    assert np.median(np.diff(rows_down)) == pytest.approx(1.6, abs=0.5)
    _, _, blink = _square_stats(render_action_clip(2, 16, size, rng, fps=fps))
    assert blink.max() > 2 * blink.min()  # full colour and dimmed frames alternate
    steady_counts, steady_rows, steady = _square_stats(render_action_clip(3, 16, size, rng, fps=fps))
    assert np.ptp(steady) < 1 and np.ptp(steady_counts) == 0 and np.ptp(steady_rows) == 0
    # sawtooths of 3 s: at 4 fps the side changes by 1.3 px a frame and 10 frames hold at most one restart
    grow_counts, _, _ = _square_stats(render_action_clip(4, 10, size, rng, fps=4.0))
    shrink_counts, _, _ = _square_stats(render_action_clip(5, 10, size, rng, fps=4.0))
    assert (np.diff(grow_counts) > 0).mean() > 0.7 and (np.diff(shrink_counts) < 0).mean() > 0.7
    background = render_action_clip(None, 4, size, rng, fps=fps)
    assert _coloured_pixels(background).sum() == 0


def test_clip_dataset_balanced_deterministic_with_background_class():
    ds = SyntheticClipDataset(num_classes=3, num_frames=4, size=16, length=8, seed=2, background_class=True)
    assert ds.num_labels == 4
    items = [ds[i] for i in range(8)]
    assert [label for _, label in items] == [0, 1, 2, 3, 0, 1, 2, 3]
    clip, _ = items[0]
    assert clip.shape == (3, 4, 16, 16) and clip.dtype == torch.float32 and 0 <= clip.min() and clip.max() <= 1
    assert torch.equal(ds[5][0], items[5][0])
    # the background label shows no coloured square, the others do
    for clip, label in items:
        coloured = _coloured_pixels((clip.permute(1, 2, 3, 0) * 255).round().numpy().astype(np.uint8))
        assert (coloured.sum() == 0) == (label == 3)
    plain = SyntheticClipDataset(num_classes=3, num_frames=4, size=16, length=6)
    assert plain.num_labels == 3 and [plain[i][1] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    with pytest.raises(IndexError):
        plain[6]


def test_synth_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["synth", "--out", str(out), "--videos", "3", "--classes", "2", "--seed", "1", "--size", "16",
                     "--fps", "4", "--min-duration", "5", "--max-duration", "6"])
    assert code == 0
    ann = load_annotations(out / "annotations.json")
    assert len(ann) == 3 and ann.classes == ["red_up", "red_down"]
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["synth_00000.mp4", "synth_00001.mp4", "synth_00002.mp4"]
    assert "wrote 3 videos" in capsys.readouterr().out
