"""A video of many clips through a clip backbone, the way end-to-end TAL trains one: cut into clips of the length the
backbone was built for, run ``clip_batch`` clips per backbone call, and the per-clip feature sequences laid end to
end along time for the localizer.

Every chunk is a view of the video (no copy for batch 1), so the input the patch embedding saves for its weight
gradient is the video itself, which is resident anyway. All chunks' graphs stay alive until the one backward of the
step, as in training: what each mode saves per clip is what the step's peak grows with.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ClipChunks(nn.Module):
    """``(B, C, n·frames, H, W) -> (B, C', n·T')`` through ``features`` (``(b, C, frames, H, W) -> (b, C', T')``)."""

    def __init__(self, features: nn.Module, frames: int, clip_batch: int = 1):
        super().__init__()
        if frames < 1 or clip_batch < 1:
            raise ValueError(f"ClipChunks needs frames ≥ 1 and clip_batch ≥ 1, got {frames}, {clip_batch}")
        self.features = features
        self.frames = frames
        self.clip_batch = clip_batch
        self.out_channels = getattr(features, "out_channels", None)

    def forward(self, video: Tensor) -> Tensor:
        batch, length = video.shape[0], video.shape[2]
        if length == 0 or length % self.frames:
            raise ValueError(
                f"ClipChunks: video length {length} frames is not a positive multiple of the clip length {self.frames}"
            )
        clips = length // self.frames
        pieces = []
        for start in range(0, clips, self.clip_batch):
            count = min(self.clip_batch, clips - start)
            chunk = video[:, :, start * self.frames:(start + count) * self.frames]
            # (B, C, k·T, H, W) -> (B·k, C, T, H, W): clips become batch entries
            chunk = chunk.unflatten(2, (count, self.frames)).transpose(1, 2).flatten(0, 1)
            feats = self.features(chunk)  # (B·k, C', T')
            pieces.append(feats.unflatten(0, (batch, count)).transpose(1, 2).flatten(2))  # (B, C', k·T')
        return torch.cat(pieces, dim=2)
