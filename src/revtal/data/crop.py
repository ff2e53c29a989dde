"""Random temporal crops of training sequences (ActionFormer's recipe), shared by the video and feature datasets.

A training item is a contiguous run of positions of its video's sequence. Its length is drawn first:

* a sequence longer than ``window`` positions (ActionFormer's ``max_seq_len``) is cut to ``window``;
* otherwise, with ``ratio = (low, high)`` (``crop_ratio``; the THUMOS recipe uses ``(0.9, 1.0)``), the length is
  uniform over ``round(low·L) .. round(high·L)`` positions of the ``L`` available;
* otherwise the whole sequence is used.

Then its start: up to ten uniform draws until some action keeps at least ``trunc_thresh`` of its length inside;
failing that the crop is placed around (or inside) one random action, so a training crop never misses every action.
The ground truth follows: segments are clipped to the crop and those left with less than ``trunc_thresh`` of their
length dropped — unless that would drop every action the crop overlaps (a crop inside an action longer than the
crop), in which case the best-covered one stays. Segments stay in seconds; the item's grid is shifted so that its
position 0 is the crop's first position, so times need no re-mapping. With ``window`` set every item is padded to
``window`` positions (ActionFormer pads its training batches to ``max_seq_len``).

Everything random comes from the ``numpy`` generator passed in, so a crop is a function of the dataset's
``(seed, epoch, index)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from revtal.data.timeline import TemporalGrid

MAX_WINDOW_TRIES = 10
THUMOS_CROP_RATIO = (0.9, 1.0)


class Crop(NamedTuple):
    start: int  # first position of the sequence in the item
    count: int  # positions taken from the sequence
    padded: int  # item length (count plus padding)
    grid: TemporalGrid  # the item's grid: its position 0 is the sequence's position ``start``
    segments: np.ndarray  # (N, 2) seconds, clipped to the crop
    labels: np.ndarray  # (N,)


@dataclass(frozen=True)
class TemporalCrop:
    """How training items are cut from their sequences (see the module docstring)."""

    window: int | None = None
    ratio: tuple[float, float] | None = None
    trunc_thresh: float = 0.5

    def __post_init__(self):
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be a positive number of positions, got {self.window}")
        if self.ratio is not None:
            if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1] <= 1:
                raise ValueError(f"crop ratio must be (low, high) with 0 < low <= high <= 1, got {self.ratio}")
            object.__setattr__(self, "ratio", (float(self.ratio[0]), float(self.ratio[1])))
        if not 0 <= self.trunc_thresh <= 1:
            raise ValueError(f"trunc_thresh must be in [0, 1], got {self.trunc_thresh}")

    def crop_length(self, length: int, rng: np.random.Generator) -> int:
        if self.window is not None and length > self.window:
            return self.window
        if self.ratio is None:
            return length
        low = max(round(self.ratio[0] * length), 1)
        high = min(round(self.ratio[1] * length), length)
        return int(rng.integers(low, max(low, high) + 1))

    def __call__(self, length: int, grid: TemporalGrid, segments: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> Crop:
        count = self.crop_length(length, rng)
        padded = max(self.window or 0, count)
        if count == length:
            return Crop(0, length, padded, grid, segments, labels)
        start = choose_window(length, count, grid, segments, rng, self.trunc_thresh)
        lo, hi = window_span(grid, start, count)
        segments, labels = clip_segments(segments, labels, lo, hi, self.trunc_thresh)
        return Crop(start, count, padded, shifted(grid, start), segments, labels)


def choose_window(
    length: int,
    window: int,
    grid: TemporalGrid,
    segments: np.ndarray,
    rng: np.random.Generator,
    trunc_thresh: float = 0.5,
) -> int:
    """Start position of a random ``window``-long cut of a ``length``-long sequence on ``grid``.

    Draws up to 10 uniform starts until some segment keeps at least ``trunc_thresh`` of its length inside the
    window (ActionFormer's rule); if none does, the window is placed at random around one random segment (or
    inside it, when the segment is longer than the window), so a training window never misses every action.
    With no segment at all the first draw is taken.
    """
    if length <= window:
        return 0
    last_start = length - window
    if not len(segments):
        return int(rng.integers(0, last_start + 1))
    for _ in range(MAX_WINDOW_TRIES):
        start = int(rng.integers(0, last_start + 1))
        if np.any(kept_fraction(segments, *window_span(grid, start, window)) >= trunc_thresh):
            return start
    # segment edges in "position boundary" units: position i spans [i, i + 1)
    first, end = grid.to_position(segments[int(rng.integers(len(segments)))]) + 0.5
    if end - first <= window:
        low, high = math.ceil(end) - window, math.floor(first)
    else:
        low, high = math.floor(first), math.ceil(end) - window
    low, high = max(0, min(low, last_start)), max(0, min(high, last_start))
    return int(rng.integers(min(low, high), max(low, high) + 1))


def window_span(grid: TemporalGrid, start: int, count: int) -> tuple[float, float]:
    """Seconds covered by positions ``start .. start+count-1``: each position owns half a step on either side."""
    return float(grid.to_seconds(start - 0.5)), float(grid.to_seconds(start + count - 0.5))


def kept_fraction(segments: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fraction of each segment's length inside ``[lo, hi]`` (a zero-length segment inside counts as whole)."""
    inside = np.clip(np.minimum(segments[:, 1], hi) - np.maximum(segments[:, 0], lo), 0, None)
    lengths = segments[:, 1] - segments[:, 0]
    whole = (lengths <= 0) & (segments[:, 0] >= lo) & (segments[:, 1] <= hi)
    return np.where(whole, 1.0, inside / np.maximum(lengths, 1e-12))


def clip_segments(
    segments: np.ndarray, labels: np.ndarray, lo: float, hi: float, trunc_thresh: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Segments cut to ``[lo, hi]``. Dropped: the ones left with no length, and those keeping less than
    ``trunc_thresh`` of their length — unless none would be left, when the best-covered overlapping one stays."""
    if not len(segments):
        return segments, labels
    clipped = np.stack([np.maximum(segments[:, 0], lo), np.minimum(segments[:, 1], hi)], axis=1)
    overlaps = clipped[:, 1] > clipped[:, 0]
    fraction = kept_fraction(segments, lo, hi)
    keep = overlaps & (fraction >= trunc_thresh)
    if not keep.any() and overlaps.any():
        keep = overlaps & (fraction == fraction[overlaps].max())
    return clipped[keep], labels[keep]


def shifted(grid: TemporalGrid, start: int) -> TemporalGrid:
    """The grid of a crop starting at position ``start`` of ``grid``."""
    return TemporalGrid(step_s=grid.step_s, offset_s=grid.offset_s + start * grid.step_s)
