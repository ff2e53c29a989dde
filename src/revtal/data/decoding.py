"""Video decoding with PyAV: probe a file, choose sampling times, decode exactly the frames shown at those times.

Sampling is defined in seconds, never in frame indices, so variable-frame-rate files and files whose first
timestamp is not zero behave like any other: the frame picked for time ``t`` is the one *on screen* at ``t``, i.e.
the last frame whose presentation time is ``<= t`` (the first frame for ``t`` before it, the last frame for ``t``
past the end). Times are measured from the video stream's first timestamp.

Frame ``j`` of ``n`` frames spread over a video of duration ``D`` sits at ``(j + 0.5) * D / n`` (the centre of the
``j``-th of ``n`` equal intervals; this is what :func:`revtal.data.timeline.grid_for_frames` assumes), and frame
``k`` at a rate ``f`` sits at ``(k + 0.5) / f``, the centre of ``[k / f, (k + 1) / f)``
(:func:`revtal.data.timeline.grid_for_snippets`).

Decoding starts at the beginning of the file, or — when the next wanted time is further ahead than
``seek_threshold_s`` — seeks: a seek lands on the keyframe at or before the target, so the decoder then runs forward
to the target. Only the frames picked are converted to RGB, and they are resized by swscale during the conversion.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from revtal.errors import UserError


class VideoDecodeError(RuntimeError, UserError):
    """A video file could not be opened or decoded (missing, corrupt or truncated); ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds
    fps: float
    num_frames: int
    width: int
    height: int


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if path.is_dir():
        raise VideoDecodeError(path, "is a directory, not a video file (give the files in it, e.g. DIR/*.mp4)")
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as err:
        raise VideoDecodeError(path, f"cannot open as a video ({err.strerror or err})") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    return container


def _stream_fps(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _stream_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Duration, frame rate, frame count and size from the container headers (decodes only when they lack them)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        duration = _stream_duration(container, stream)
        num_frames = int(stream.frames or 0)
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        if duration is None or fps is None or num_frames <= 0:
            # Headers are incomplete (raw streams, some webm): count by decoding.
            times = [t for t, _ in _iterate_frames(container, stream, path)]
            if not times:
                raise VideoDecodeError(path, "no decodable frames")
            if fps is None:
                fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 1.0
            num_frames = len(times)
            if duration is None:
                duration = times[-1] + 1.0 / fps
    finally:
        container.close()
    if width <= 0 or height <= 0:
        raise VideoDecodeError(path, f"invalid frame size {width}x{height}")
    return VideoInfo(duration=float(duration), fps=float(fps), num_frames=num_frames, width=width, height=height)


def sample_timestamps_evenly(duration: float, num_frames: int) -> np.ndarray:
    """``num_frames`` times spread over the whole video: frame ``j`` at ``(j + 0.5) * duration / num_frames``."""
    if not duration > 0 or num_frames <= 0:
        raise ValueError(f"need duration > 0 and num_frames > 0, got duration={duration}, num_frames={num_frames}")
    return (np.arange(num_frames, dtype=np.float64) + 0.5) * (duration / num_frames)


def num_frames_at_fps(duration: float, fps: float) -> int:
    """How many whole frame intervals ``[k / fps, (k + 1) / fps)`` fit in the video (at least one)."""
    if not duration > 0 or not fps > 0:
        raise ValueError(f"need duration > 0 and fps > 0, got duration={duration}, fps={fps}")
    # the epsilon keeps 10.0 s at 8 fps at 80 frames despite floating-point noise in the duration
    return max(1, int(math.floor(duration * fps + 1e-6)))


def sample_timestamps_at_fps(duration: float, fps: float) -> np.ndarray:
    """Times of a ``fps`` re-sampling: frame ``k`` at ``(k + 0.5) / fps`` for every whole interval in the video."""
    return (np.arange(num_frames_at_fps(duration, fps), dtype=np.float64) + 0.5) / fps


def _output_size(size: int | tuple[int, int] | None, width: int, height: int) -> tuple[int, int]:
    """(height, width) after resizing: an int is the shorter side (aspect kept), a pair is exact."""
    if size is None:
        return height, width
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        scale = size / min(width, height)
        return max(1, round(height * scale)), max(1, round(width * scale))
    out_h, out_w = (int(s) for s in size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return out_h, out_w


def _iterate_frames(container, stream, path):
    """Yield ``(time_s, frame)`` in presentation order from the current position, translating decoder errors."""
    time_base = stream.time_base or Fraction(1, 1)
    start = stream.start_time or 0
    fps = _stream_fps(stream) or 25.0
    last_time = None
    try:
        for frame in container.decode(stream):
            if frame.pts is not None:
                t = float((frame.pts - start) * time_base)
            else:
                # No timestamp (raw streams): assume a constant rate after the previous frame.
                t = 0.0 if last_time is None else last_time + 1.0 / fps
            last_time = t
            yield t, frame
    except av.error.FFmpegError as err:
        where = f"after {last_time:.3f} s" if last_time is not None else "at the start"
        raise VideoDecodeError(path, f"decoding failed {where} ({err.strerror or err}); the file is corrupt") from None


def decode_frames(
    path: str | os.PathLike,
    timestamps,
    size: int | tuple[int, int] | None = None,
    *,
    seek_threshold_s: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the frames on screen at ``timestamps`` (seconds, any order, repeats allowed).

    Returns ``(frames, actual)``: ``uint8`` RGB frames ``(T, H, W, 3)`` in the order asked and the presentation
    times (seconds) of the frames picked. ``size``: ``None`` keeps the native size, an ``int`` sets the shorter
    side, ``(height, width)`` sets both. A file that ends well before its declared duration while later times are
    still wanted raises :class:`VideoDecodeError` (truncated), as do missing and undecodable files.
    """
    wanted = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if wanted.size == 0:
        raise ValueError(f"{path}: no timestamps to decode")
    if not np.all(np.isfinite(wanted)) or np.any(wanted < 0):
        raise ValueError(f"{path}: timestamps must be finite and >= 0, got min {wanted.min()}")
    order = np.argsort(wanted, kind="stable")
    sorted_times = wanted[order]

    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        out_h, out_w = _output_size(size, stream.codec_context.width, stream.codec_context.height)
        declared = _stream_duration(container, stream)
        time_base = stream.time_base or Fraction(1, 1)
        start_pts = stream.start_time or 0

        picked: list[tuple[np.ndarray, float] | None] = [None] * len(wanted)
        converted: dict[float, np.ndarray] = {}  # one conversion per distinct frame (short videos repeat frames)

        def take(frame, t: float) -> tuple[np.ndarray, float]:
            if t not in converted:
                converted[t] = frame.to_ndarray(width=out_w, height=out_h, format="rgb24", interpolation="AREA")
            return converted[t], t

        i = 0
        position = 0.0  # time of the last decoded frame; decoding starts at the beginning of the file
        allow_seek = True
        last_seen: tuple[object, float] | None = None
        while i < len(sorted_times):
            target = sorted_times[i]
            seeked = False
            if allow_seek and target - position > seek_threshold_s:
                container.seek(start_pts + int(target / time_base), stream=stream, backward=True, any_frame=False)
                seeked = True
            previous: tuple[object, float] | None = None
            restart = False
            for t, frame in _iterate_frames(container, stream, path):
                if seeked and previous is None and t > target + 1e-6:
                    # The seek overshot (broken index): decode this file from the start without seeking.
                    container.seek(start_pts, stream=stream, backward=True, any_frame=False)
                    allow_seek, position, restart = False, 0.0, True
                    break
                while i < len(sorted_times) and sorted_times[i] < t:
                    holder = previous if previous is not None else (frame, t)
                    picked[order[i]] = take(*holder)
                    i += 1
                previous = (frame, t)
                position = t
                if i == len(sorted_times):
                    break  # everything wanted is decoded: leave the rest of the file alone
                if t >= target and i < len(sorted_times) and allow_seek and sorted_times[i] - t > seek_threshold_s:
                    break  # far from the next target: seek instead of decoding the gap
            else:
                # End of stream: everything still wanted shows the last frame, unless the file was cut short.
                if previous is None and last_seen is None:
                    raise VideoDecodeError(path, "no decodable frames")
                last_frame, last_t = previous if previous is not None else last_seen
                frame_period = 1.0 / (_stream_fps(stream) or 25.0)
                decoded_end = last_t + frame_period
                if (
                    i < len(sorted_times)
                    and declared is not None
                    and sorted_times[-1] > decoded_end
                    and decoded_end < declared - max(0.5, 2 * frame_period)
                ):
                    found = f"frames end at {decoded_end:.2f} s" if previous is not None else f"no frames at {target:.2f} s"
                    raise VideoDecodeError(path, f"truncated: {found} but the file declares {declared:.2f} s")
                while i < len(sorted_times):
                    picked[order[i]] = take(last_frame, last_t)
                    i += 1
                break
            if previous is not None:
                last_seen = previous
            if restart:
                continue
    finally:
        container.close()

    frames = np.stack([p[0] for p in picked])
    actual = np.array([p[1] for p in picked], dtype=np.float64)
    return frames, actual
