"""The one mapping between feature (grid) positions and seconds.

Every temporal feature sequence in revtal, whatever produced it, sits on an affine grid: feature ``i`` is centred
at ``offset_s + i * step_s`` seconds. The localizer works in grid units (positions and distances measured in
features); the data module converts annotations into grid units and predictions back to seconds, always through
:class:`TemporalGrid`, so the two directions cannot drift apart.

Two ways of turning a video into a sequence lead to a grid:

* ``frames`` (Re²TAL / ActivityNet recipe): ``num_frames`` frames sampled evenly over the whole video, frame ``j``
  at time ``(j + 0.5) * duration / num_frames``; a backbone with temporal stride ``d`` turns them into
  ``num_frames / d`` features, feature ``i`` covering frames ``i*d .. i*d + d - 1`` and centred on their middle.
* ``snippets`` (feature extraction, LoSA): clips of ``clip_frames`` frames taken every ``stride_frames`` frames of a
  video decoded at ``fps``; feature ``i`` is centred on clip ``i``'s middle, ``(i * stride + clip / 2) / fps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TemporalGrid:
    """Feature ``i`` is centred at ``offset_s + i * step_s`` seconds."""

    step_s: float
    offset_s: float = 0.0

    def __post_init__(self):
        if not self.step_s > 0:
            raise ValueError(f"TemporalGrid.step_s must be > 0 seconds, got {self.step_s!r}")

    def to_seconds(self, position):
        """Grid position(s) (feature index units, may be fractional) → seconds."""
        return self.offset_s + np.asarray(position, dtype=np.float64) * self.step_s

    def to_position(self, seconds):
        """Seconds → grid position(s) in feature index units (fractional)."""
        return (np.asarray(seconds, dtype=np.float64) - self.offset_s) / self.step_s

    def lengths_to_seconds(self, length):
        """A duration measured in features → seconds (no offset)."""
        return np.asarray(length, dtype=np.float64) * self.step_s

    def coarsened(self, factor: int) -> "TemporalGrid":
        """The grid after a temporal stride of ``factor``: new position i covers old positions
        [i·factor, i·factor + factor) and sits at their centre."""
        if factor < 1:
            raise ValueError(f"TemporalGrid.coarsened needs a factor >= 1, got {factor}")
        return TemporalGrid(step_s=self.step_s * factor, offset_s=self.offset_s + 0.5 * (factor - 1) * self.step_s)


def grid_for_frames(duration_s: float, num_frames: int, temporal_stride: int = 1) -> TemporalGrid:
    """Grid of a backbone with temporal stride ``temporal_stride`` fed ``num_frames`` frames spread over the video."""
    if duration_s <= 0 or num_frames <= 0 or temporal_stride <= 0:
        raise ValueError(
            f"grid_for_frames needs positive duration, frames and stride; got {duration_s}, {num_frames}, {temporal_stride}"
        )
    frame_step = duration_s / num_frames
    step = frame_step * temporal_stride
    # feature i spans frames [i*d, i*d + d): their centre is at (i*d + d/2) * frame_step
    return TemporalGrid(step_s=step, offset_s=0.5 * step)


def grid_for_snippets(fps: float, stride_frames: int, clip_frames: int) -> TemporalGrid:
    """Grid of clip features: clip ``i`` starts at frame ``i * stride_frames`` and lasts ``clip_frames`` frames."""
    if fps <= 0 or stride_frames <= 0 or clip_frames <= 0:
        raise ValueError(f"grid_for_snippets needs positive fps, stride and clip length; got {fps}, {stride_frames}, {clip_frames}")
    return TemporalGrid(step_s=stride_frames / fps, offset_s=0.5 * clip_frames / fps)
