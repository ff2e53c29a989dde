"""Trimmed-clip classification data: which frames a clip shows, and the dataset that decodes them.

Two ways to choose the ``num_frames`` frames of a clip from a video of ``total`` frames (indices at the file's own
frame rate), as VideoMAE finetunes on its two datasets:

* ``uniform`` (TSN segments; SSv2): the video is cut into ``num_frames`` equal segments and one frame is taken from
  each — a random one when training, and for evaluation view ``v`` of ``V`` the frame at ``(v + 0.5) / V`` of
  every segment (so ``V`` views interleave). The clip always spans the whole video.
* ``dense`` (Kinetics): ``num_frames`` frames ``frame_interval`` apart (a span of ``num_frames * frame_interval``);
  training starts the span at a random frame, evaluation view ``v`` of ``V`` at ``v / (V - 1)`` of the room left
  (evenly spaced starts from the first to the last possible, the middle one for ``V = 1``). Frames past the end of
  a short video repeat its last frame.

Evaluation shows each video as ``test_clips × test_crops`` views, as VideoMAE tests (2 × 3 on SSv2, 5 × 3 on
Kinetics): each clip's frames are resized (shorter side ``img_size``) and cut into ``test_crops`` square crops
spread along the longer side (:func:`~revtal.data.transforms.spatial_crops`); the scores of all views are averaged.

Randomness (frame choice, augmentation) is a function of ``(seed, epoch, index)`` only, as in the TAL datasets, so
the data do not depend on worker processes and a resumed run sees the same batches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data

from revtal.data.cliplists import ClipList
from revtal.data.decoding import VideoDecodeError, decode_frames, probe_video
from revtal.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize, Resize, build_transforms, spatial_crops, to_float_video

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "dense")


def uniform_segment_indices(total: int, num_frames: int, rng: np.random.Generator | None = None,
                            view: int = 0, num_views: int = 1) -> np.ndarray:
    """One frame per each of ``num_frames`` equal segments of ``[0, total)``: random (``rng``) or the view's
    fixed offset into every segment."""
    if total < 1 or num_frames < 1:
        raise ValueError(f"need total >= 1 and num_frames >= 1, got {total}, {num_frames}")
    length = total / num_frames
    starts = np.arange(num_frames) * length
    offsets = rng.random(num_frames) * length if rng is not None else np.full(num_frames, (view + 0.5) / num_views * length)
    return np.minimum(np.floor(starts + offsets).astype(np.int64), total - 1)


def dense_indices(total: int, num_frames: int, frame_interval: int, rng: np.random.Generator | None = None,
                  view: int = 0, num_views: int = 1) -> np.ndarray:
    """``num_frames`` frames ``frame_interval`` apart from a random start (``rng``) or the view's evenly spaced
    start; indices past the end repeat the last frame."""
    if total < 1 or num_frames < 1 or frame_interval < 1:
        raise ValueError(f"need total, num_frames, frame_interval >= 1, got {total}, {num_frames}, {frame_interval}")
    span = (num_frames - 1) * frame_interval + 1
    room = max(0, total - span)
    if rng is not None:
        start = int(rng.integers(room + 1))
    else:
        start = room // 2 if num_views == 1 else (view * room) // (num_views - 1)
    return np.minimum(start + np.arange(num_frames) * frame_interval, total - 1)


def clip_indices(sampling: str, total: int, num_frames: int, frame_interval: int,
                 rng: np.random.Generator | None = None, view: int = 0, num_views: int = 1) -> np.ndarray:
    if sampling == "uniform":
        return uniform_segment_indices(total, num_frames, rng, view, num_views)
    if sampling == "dense":
        return dense_indices(total, num_frames, frame_interval, rng, view, num_views)
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


class ClipDataset(torch.utils.data.Dataset):
    """Videos of a :class:`~revtal.data.cliplists.ClipList`, one clip (training) or all views (evaluation) each.

    Training item: ``video`` float32 (C, num_frames, img_size, img_size), ``label`` int, ``index``, ``skipped``.
    Evaluation item: ``video`` (test_clips * test_crops, C, num_frames, img_size, img_size), clip-major.
    A video that cannot be decoded raises :class:`~revtal.data.decoding.VideoDecodeError`, or with
    ``skip_bad_videos`` is logged, remembered and replaced by the next readable one.
    """

    accepts_epoch_keys = True

    def __init__(self, clips: ClipList, *, train: bool, num_frames: int = 16, img_size: int = 112,
                 sampling: str = "uniform", frame_interval: int = 4, test_clips: int = 1, test_crops: int = 1,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 train_scale: tuple[float, float] = (0.25, 1.0), seed: int = 0, skip_bad_videos: bool = False,
                 cache_mb: float = 0.0):
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if test_clips < 1 or test_crops not in (1, 3):
            raise ValueError(f"test_clips must be >= 1 and test_crops 1 or 3, got {test_clips}, {test_crops}")
        self.clips, self.train = clips, train
        self.num_frames, self.img_size, self.sampling, self.frame_interval = num_frames, img_size, sampling, frame_interval
        self.test_clips, self.test_crops = (1, 1) if train else (test_clips, test_crops)
        self.seed, self.skip_bad_videos = seed, skip_bad_videos
        self.epoch = 0
        self.skipped: dict[str, str] = {}
        self.augment = build_transforms(True, img_size, mean, std, scale=tuple(train_scale), color_jitter=None)
        self.resize, self.normalize = Resize(img_size), Normalize(mean, std)
        self._info: dict[str, tuple[int, float]] = {}
        self._cache_budget, self._cache_used = int(cache_mb * 2**20), 0
        self._cache: dict[tuple, np.ndarray] = {}

    @property
    def classes(self) -> list[str]:
        return self.clips.classes

    @property
    def num_views(self) -> int:
        return self.test_clips * self.test_crops

    def __len__(self) -> int:
        return len(self.clips.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _frames_and_fps(self, path) -> tuple[int, float]:
        key = str(path)
        if key not in self._info:
            info = probe_video(path)
            self._info[key] = (max(1, int(round(info.duration * info.fps))), info.fps)
        return self._info[key]

    def _decode(self, path, indices: np.ndarray, fps: float) -> torch.Tensor:
        key = (str(path), indices.tobytes())
        frames = self._cache.get(key)
        if frames is None:
            frames, _ = decode_frames(path, (indices + 0.5) / fps)
            if self._cache_used + frames.nbytes <= self._cache_budget:
                self._cache[key] = frames
                self._cache_used += frames.nbytes
        return to_float_video(frames)

    def _load(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        path = self.clips.entries[index].path
        total, fps = self._frames_and_fps(path)
        if self.train:
            indices = clip_indices(self.sampling, total, self.num_frames, self.frame_interval, rng)
            video = self._decode(path, indices, fps)
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            return self.augment(video, generator)
        views = []
        for clip in range(self.test_clips):
            indices = clip_indices(self.sampling, total, self.num_frames, self.frame_interval, None, clip, self.test_clips)
            video = self.resize(self._decode(path, indices, fps))
            views.extend(self.normalize(crop) for crop in spatial_crops(video, self.img_size, self.test_crops))
        return torch.stack(views)

    def __getitem__(self, key) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        skipped: list[str] = []
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            entry = self.clips.entries[i]
            if str(entry.path) in self.skipped:
                skipped.append(str(entry.path))
                continue
            try:
                video = self._load(i, np.random.default_rng([self.seed, epoch, i]))
            except VideoDecodeError as err:
                if not self.skip_bad_videos:
                    raise VideoDecodeError(err.path, f"{err.reason} ({entry.source})") from None
                log.warning("skipping unreadable clip %s (%s): %s", entry.path, entry.source, err.reason)
                self.skipped[str(entry.path)] = err.reason
                skipped.append(str(entry.path))
                continue
            return {"video": video, "label": entry.label, "index": i, "skipped": skipped}
        raise RuntimeError(f"none of the {len(self)} clips could be decoded; see the warnings above")


def collate_clips(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "video": torch.stack([item["video"] for item in batch]),
        "label": torch.tensor([item["label"] for item in batch], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.long),
        "skipped": [vid for item in batch for vid in item["skipped"]],
    }
