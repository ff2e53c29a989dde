"""TAL datasets over videos (decoded on the fly) or precomputed features, their collate function and loader.

An item is one video (or, when training with a crop, one random part of it) turned into a sequence on a
:class:`~revtal.data.timeline.TemporalGrid`: position ``i`` of the sequence is centred at
``item["grid"].to_seconds(i)`` seconds of the *video*. Segments stay in seconds; the trainer maps them to its
feature grid with ``item["grid"].coarsened(backbone_stride)``.

Input arrangements (``mode``):

* ``"frames"`` (Re²TAL): the sequence is frames and the whole item is one backbone input, ``video`` (C, T, H, W).
  With ``fps=None``, ``num_frames`` frames are spread evenly over the whole video, whatever its length (the
  ActivityNet recipe); a video with fewer frames than that repeats frames — every position still shows its
  time, so the mask stays true. With ``fps`` set, the sequence is every frame of an ``fps`` re-sampling.
* ``"snippets"`` (LoSA, feature extraction): the sequence is clips of ``clip_frames`` frames starting every
  ``clip_stride`` frames of an ``fps`` re-sampling (overlapping when the stride is shorter than the clip), ``video``
  (num_clips, C, clip_frames, H, W). ``fps`` defaults to the annotation's, then the file's. Clips cover the whole
  video; frames past the end repeat the last one.

Training crops (``train=True``; :mod:`revtal.data.crop`, ActionFormer's recipe): with ``crop_ratio=(low, high)``
each item is a random ``low``–``high`` fraction of its sequence, with ``window=W`` a sequence longer than ``W``
positions is cut to ``W`` and every item padded to ``W`` with the mask false. Ground truth is clipped to the crop,
segments keeping less than ``trunc_thresh`` of their length are dropped, and the item's grid starts at the crop.
Evaluation items always hold the whole video (no crop), so their lengths differ and :func:`collate_tal` pads them.
Training drops videos without any action instance.

Randomness (windows, augmentation) is a function of ``(seed, epoch, index)`` only, so results do not depend on the
number of workers. :func:`build_loader`'s sampler passes the epoch along with each index, so even worker processes
(which hold copies of the dataset) see the right epoch.

Missing files raise :class:`FileNotFoundError` at construction and undecodable ones
:class:`~revtal.data.decoding.VideoDecodeError` when loaded; with ``skip_bad_videos=True`` both are logged and
skipped instead: a bad video is replaced by the next good one, the item lists the ids it skipped under
``"skipped"`` (so the count survives worker processes: the collated batch concatenates them), and
:meth:`report_skipped` logs the total.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.utils.data

from revtal.data.annotations import AnnotationSet, VideoAnnotation, duration_mismatch, load_annotations
from revtal.data.crop import TemporalCrop, choose_window, clip_segments, window_span  # noqa: F401 (re-exported)
from revtal.data.decoding import (
    VideoDecodeError,
    decode_frames,
    num_frames_at_fps,
    probe_video,
    sample_timestamps_at_fps,
    sample_timestamps_evenly,
)
from revtal.data.timeline import TemporalGrid, grid_for_frames, grid_for_snippets
from revtal.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, to_float_video
from revtal.errors import UserError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


class FeatureFileError(RuntimeError, UserError):
    """A feature file could not be read or has the wrong shape; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {reason}")


BAD_MEDIA_ERRORS = (VideoDecodeError, FeatureFileError)


def find_media_files(directory: str | os.PathLike, video_ids: Iterable[str], extensions: Sequence[str]) -> dict[str, Path]:
    """Map video ids to files in ``directory`` named ``ID.ext`` or ``v_ID.ext`` (ActivityNet's YouTube ids are
    stored without the ``v_`` their downloads carry). Ids without a file are left out."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"media folder not found: {directory}")
    by_stem: dict[str, Path] = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_file() and path.suffix.lower() in extensions:
            by_stem.setdefault(path.stem, path)
    found = {}
    for vid in video_ids:
        for stem in (vid, f"v_{vid}"):
            if stem in by_stem:
                found[vid] = by_stem[stem]
                break
    return found


def _examples(ids: Sequence[str], limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (" ..." if len(ids) > limit else "")


def _pad_time(tensor: torch.Tensor, dim: int, length: int, value=0) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, torch.full(shape, value, dtype=tensor.dtype)], dim=dim)


class _TALDatasetBase(torch.utils.data.Dataset):
    """Annotation bookkeeping, file lookup, skipping, epochs and windows shared by the video and feature datasets."""

    # build_loader's sampler hands (index, epoch) keys to datasets that set this
    accepts_epoch_keys = True
    media_kind = "video"

    def __init__(
        self,
        annotations: AnnotationSet | str | os.PathLike,
        media_dir: str | os.PathLike,
        subset: str | Sequence[str] | None,
        *,
        extensions: Sequence[str],
        train: bool,
        window: int | None,
        seed: int,
        skip_bad_videos: bool,
        trunc_thresh: float,
        keep_empty: bool | None,
        crop_ratio: tuple[float, float] | None = None,
    ):
        if not isinstance(annotations, AnnotationSet):
            annotations = load_annotations(annotations)
        if subset is not None:
            annotations = annotations.subset(subset)
        self.annotations = annotations
        self.classes = list(annotations.classes)
        self.crop = TemporalCrop(window, tuple(crop_ratio) if crop_ratio is not None else None, trunc_thresh)
        self.train, self.window, self.seed = train, window, seed
        self.skip_bad_videos, self.trunc_thresh = skip_bad_videos, trunc_thresh
        self.epoch = 0
        self.skipped: dict[str, str] = {}  # video id -> reason, as seen by this process

        keep_empty = (not train) if keep_empty is None else keep_empty
        candidates = [vid for vid, ann in annotations.videos.items() if keep_empty or len(ann.labels)]
        # training items need actions; say so rather than shrink the dataset silently
        self.without_annotations = [vid for vid, ann in annotations.videos.items() if not keep_empty and not len(ann.labels)]
        if self.without_annotations:
            log.warning("leaving out %d of %d %ss%s that have no annotations: %s",
                        len(self.without_annotations), len(annotations.videos), self.media_kind,
                        f" of subset {subset!r}" if subset is not None else "", _examples(self.without_annotations))
        files = find_media_files(media_dir, candidates, extensions)
        missing = [vid for vid in candidates if vid not in files]
        if missing:
            listed = _examples(missing)
            if not skip_bad_videos:
                raise FileNotFoundError(
                    f"{len(missing)} of {len(candidates)} {self.media_kind}s have no file in {media_dir} "
                    f"(looked for ID or v_ID with {', '.join(extensions)}): {listed}"
                )
            log.warning("skipping %d %ss with no file in %s: %s", len(missing), self.media_kind, media_dir, listed)
            self.skipped.update({vid: f"no file in {media_dir}" for vid in missing})
        self.video_ids = [vid for vid in candidates if vid in files]
        self.files = files
        if not self.video_ids:
            raise ValueError(f"no usable {self.media_kind}s for subset {subset!r} in {media_dir}")

    def __len__(self) -> int:
        return len(self.video_ids)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by plain integer indexing (the loader's sampler passes it with each index instead)."""
        self.epoch = int(epoch)

    def _rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def __getitem__(self, key) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} {self.media_kind}s")
        index %= len(self)
        skipped: list[str] = []
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            vid = self.video_ids[i]
            if vid in self.skipped:
                skipped.append(vid)
                continue
            try:
                item = self._load(self.annotations.videos[vid], self.files[vid], self._rng(i, epoch))
            except BAD_MEDIA_ERRORS as err:
                if not self.skip_bad_videos:
                    raise
                log.warning("skipping %s %r: %s", self.media_kind, vid, err)
                self.skipped[vid] = str(err)
                skipped.append(vid)
                continue
            item["skipped"] = skipped
            return item
        raise RuntimeError(f"none of the {len(self)} {self.media_kind}s could be loaded; see the warnings above")

    def report_skipped(self, also_skipped: Iterable[str] = ()) -> int:
        """Log how many distinct videos were skipped (this process's plus ``also_skipped``, e.g. the ``"skipped"``
        lists of the batches a multi-worker loader produced); returns the count."""
        ids = set(self.skipped) | set(also_skipped)
        if ids:
            log.warning("skipped %d of %d %ss: %s", len(ids), self._total(), self.media_kind, ", ".join(sorted(ids)))
        return len(ids)

    def _total(self) -> int:
        return len(self.video_ids) + len(set(self.skipped) - set(self.video_ids))

    def usage_summary(self, also_skipped: Iterable[str] = ()) -> str | None:
        """One line for the end of an epoch or run: how many videos were skipped as unreadable or missing
        (``also_skipped`` as in :meth:`report_skipped`) and how many were left out for having no annotations;
        None when every video was used."""
        skipped = sorted(set(self.skipped) | set(also_skipped))
        parts = []
        if skipped:
            parts.append(f"skipped {len(skipped)} unreadable or missing ({_examples(skipped)})")
        if self.without_annotations:
            parts.append(f"left out {len(self.without_annotations)} without annotations "
                         f"({_examples(self.without_annotations)})")
        if not parts:
            return None
        total = self._total() + len(self.without_annotations)
        return f"used {total - len(skipped) - len(self.without_annotations)} of {total} {self.media_kind}s: " + "; ".join(parts)

    def _select(self, length: int, grid: TemporalGrid, ann: VideoAnnotation, rng: np.random.Generator):
        """(start, count, padded length, item grid, segments, labels) of this item's part of the sequence."""
        if self.train:
            return tuple(self.crop(length, grid, *ann.training_targets(), rng))
        return 0, length, length, grid, *ann.training_targets()

    def _common_fields(self, ann: VideoAnnotation, grid: TemporalGrid, segments, labels) -> dict[str, Any]:
        return {
            "segments": torch.as_tensor(np.asarray(segments, dtype=np.float32).reshape(-1, 2)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "video_id": ann.video_id,
            "duration": float(ann.duration),
            "grid": grid,
        }

    def _load(self, ann: VideoAnnotation, path: Path, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class SnippetSampling:
    """How ``snippets`` mode slices a video: clips of ``clip_frames`` frames starting every ``clip_stride`` frames
    of an ``fps`` re-sampling, covering the whole video (frames past the end repeat the last one). The datasets and
    ``revtal detect`` on a single file both slice through it."""

    fps: float
    clip_frames: int
    clip_stride: int

    def num_clips(self, duration: float) -> int:
        total = num_frames_at_fps(duration, self.fps)
        return 1 + max(0, math.ceil((total - self.clip_frames) / self.clip_stride))

    def grid(self) -> TemporalGrid:
        return grid_for_snippets(self.fps, self.clip_stride, self.clip_frames)

    def clips(self, duration: float, decode: Callable[[np.ndarray], torch.Tensor], start: int = 0,
              count: int | None = None) -> torch.Tensor:
        """Clips ``start`` to ``start + count`` (default: to the end) as (count, C, clip_frames, H, W).
        ``decode(times)`` returns the frames at ``times`` seconds as (C, len(times), H, W); each distinct frame
        is decoded (and transformed) once, also where clips overlap."""
        total = num_frames_at_fps(duration, self.fps)
        count = self.num_clips(duration) - start if count is None else count
        clip_starts = (start + np.arange(count)) * self.clip_stride
        frame_index = np.minimum(clip_starts[:, None] + np.arange(self.clip_frames), total - 1)
        needed, inverse = np.unique(frame_index, return_inverse=True)
        decoded = decode((needed + 0.5) / self.fps)  # (C, U, H, W)
        channels, _, height, width = decoded.shape
        clips = decoded[:, torch.as_tensor(inverse.reshape(-1))].view(channels, count, self.clip_frames, height, width)
        return clips.permute(1, 0, 2, 3, 4).contiguous()


class VideoTALDataset(_TALDatasetBase):
    """Videos decoded on the fly; see the module docstring for the modes, windows and skipping.

    Item: ``video`` float32 (C, T, H, W) in ``frames`` mode or (T, C, clip_frames, H, W) in ``snippets`` mode
    (T = number of clips), ``frame_mask`` bool (T,), ``segments`` float32 (N, 2) seconds, ``labels`` int64 (N,),
    ``video_id``, ``duration`` (seconds), ``grid`` (a TemporalGrid of the T positions), ``skipped`` (ids).
    Frames are decoded with the shorter side at ``decode_size`` (default ``img_size``) and then go through
    ``transform`` (default :func:`~revtal.data.transforms.build_transforms` for ``train``), which gets a
    ``torch.Generator`` seeded per item.
    """

    def __init__(
        self,
        annotations: AnnotationSet | str | os.PathLike,
        video_dir: str | os.PathLike,
        subset: str | Sequence[str] | None,
        *,
        mode: str = "frames",
        num_frames: int | None = 32,
        img_size: int = 64,
        train: bool = False,
        clip_frames: int = 16,
        clip_stride: int = 16,
        fps: float | None = None,
        skip_bad_videos: bool = False,
        window: int | None = None,
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        transform=None,
        decode_size: int | None = None,
        trunc_thresh: float = 0.5,
        crop_ratio: tuple[float, float] | None = None,
        keep_empty: bool | None = None,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        cache_mb: float = 0.0,
    ):
        if mode not in ("frames", "snippets"):
            raise ValueError(f"mode must be 'frames' or 'snippets', got {mode!r}")
        if mode == "frames" and fps is None and not (num_frames and num_frames > 0):
            raise ValueError("frames mode without fps needs num_frames > 0 (frames spread over each video)")
        if mode == "snippets" and (clip_frames < 1 or clip_stride < 1):
            raise ValueError(f"clip_frames and clip_stride must be >= 1, got {clip_frames}, {clip_stride}")
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        super().__init__(
            annotations, video_dir, subset, extensions=extensions, train=train, window=window, seed=seed,
            skip_bad_videos=skip_bad_videos, trunc_thresh=trunc_thresh, keep_empty=keep_empty, crop_ratio=crop_ratio,
        )
        self.video_dir = Path(video_dir)
        self.mode, self.num_frames, self.img_size, self.fps = mode, num_frames, img_size, fps
        self.clip_frames, self.clip_stride = clip_frames, clip_stride
        self.decode_size = decode_size or img_size
        self.transform = transform if transform is not None else build_transforms(train, img_size, mean, std)
        self._native_fps: dict[str, float] = {}
        self._duration_checked: set[str] = set()
        # decoded uint8 frames kept in memory (per process) up to ``cache_mb``: small datasets trained for many
        # epochs (the synthetic set) are otherwise dominated by re-decoding the same frames every epoch
        self._cache_budget = int(cache_mb * 2**20)
        self._cache: dict[tuple, np.ndarray] = {}
        self._cache_used = 0

    def _snippet_fps(self, ann: VideoAnnotation, path: Path) -> float:
        if self.fps is not None:
            return self.fps
        if ann.fps is not None:
            return ann.fps
        if ann.video_id not in self._native_fps:
            self._native_fps[ann.video_id] = probe_video(path).fps
        return self._native_fps[ann.video_id]

    def _decode(self, path: Path, times: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        key = (str(path), np.asarray(times, dtype=np.float64).tobytes(), self.decode_size)
        frames = self._cache.get(key)
        if frames is None:
            frames, _ = decode_frames(path, times, size=self.decode_size)
            if self._cache_used + frames.nbytes <= self._cache_budget:
                self._cache[key] = frames
                self._cache_used += frames.nbytes
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return self.transform(to_float_video(frames), generator)

    def _check_duration(self, ann: VideoAnnotation, path: Path) -> None:
        """Warn once per video whose file decodes to a length far from its annotated duration (frames are sampled
        and segments placed by the annotated one: a wrong duration silently stretches every prediction)."""
        if ann.video_id in self._duration_checked:
            return
        self._duration_checked.add(ann.video_id)
        warning = duration_mismatch(ann.video_id, ann.duration, probe_video(path).duration)
        if warning:
            log.warning("%s (%s)", warning, path)

    def _load(self, ann: VideoAnnotation, path: Path, rng: np.random.Generator) -> dict[str, Any]:
        self._check_duration(ann, path)
        if self.mode == "frames":
            if self.fps is None:
                times = sample_timestamps_evenly(ann.duration, self.num_frames)
                grid = grid_for_frames(ann.duration, self.num_frames)
            else:
                times = sample_timestamps_at_fps(ann.duration, self.fps)
                grid = grid_for_snippets(self.fps, 1, 1)
            start, count, padded, item_grid, segments, labels = self._select(len(times), grid, ann, rng)
            video = self._decode(path, times[start : start + count], rng)  # (C, count, H, W)
            video = _pad_time(video, 1, padded)
        else:
            sampling = SnippetSampling(self._snippet_fps(ann, path), self.clip_frames, self.clip_stride)
            start, count, padded, item_grid, segments, labels = self._select(
                sampling.num_clips(ann.duration), sampling.grid(), ann, rng)
            # one transform for all the clips' frames
            clips = sampling.clips(ann.duration, lambda times: self._decode(path, times, rng), start, count)
            video = _pad_time(clips, 0, padded)
        mask = torch.zeros(padded, dtype=torch.bool)
        mask[:count] = True
        return {"video": video, "frame_mask": mask, **self._common_fields(ann, item_grid, segments, labels)}


class FeatureTALDataset(_TALDatasetBase):
    """Precomputed features, one ``ID.npy`` (or ``v_ID.npy``) per video shaped (C, T) (``layout="TC"`` for (T, C)).

    The grid: with ``fps`` set, feature ``i`` is a snippet of ``clip_frames`` frames starting at frame
    ``i * stride_frames`` of an ``fps`` video (:func:`~revtal.data.timeline.grid_for_snippets`); without, the T
    features are spread evenly over the video (:func:`~revtal.data.timeline.grid_for_frames`). Item: ``features``
    float32 (C, T), ``mask`` bool (T,), ``segments``, ``labels``, ``video_id``, ``duration``, ``grid``, ``skipped``.
    """

    media_kind = "feature file"

    def __init__(
        self,
        feature_dir: str | os.PathLike,
        annotations: AnnotationSet | str | os.PathLike,
        subset: str | Sequence[str] | None,
        *,
        fps: float | None = None,
        stride_frames: int = 1,
        clip_frames: int = 1,
        layout: str = "CT",
        train: bool = False,
        window: int | None = None,
        seed: int = 0,
        skip_bad_videos: bool = False,
        trunc_thresh: float = 0.5,
        crop_ratio: tuple[float, float] | None = None,
        keep_empty: bool | None = None,
    ):
        if layout not in ("CT", "TC"):
            raise ValueError(f"layout must be 'CT' or 'TC', got {layout!r}")
        super().__init__(
            annotations, feature_dir, subset, extensions=(".npy",), train=train, window=window, seed=seed,
            skip_bad_videos=skip_bad_videos, trunc_thresh=trunc_thresh, keep_empty=keep_empty, crop_ratio=crop_ratio,
        )
        self.feature_dir = Path(feature_dir)
        self.fps, self.stride_frames, self.clip_frames, self.layout = fps, stride_frames, clip_frames, layout

    def _read(self, path: Path) -> np.ndarray:
        try:
            features = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise FeatureFileError(path, f"cannot read features ({err})") from None
        if features.ndim != 2 or 0 in features.shape:
            raise FeatureFileError(path, f"expected a 2-D ({self.layout}) feature array, got shape {features.shape}")
        if not np.issubdtype(features.dtype, np.number):
            raise FeatureFileError(path, f"expected numbers, got dtype {features.dtype}")
        return features.T if self.layout == "TC" else features

    def _load(self, ann: VideoAnnotation, path: Path, rng: np.random.Generator) -> dict[str, Any]:
        features = self._read(path)
        length = features.shape[1]
        if self.fps is not None:
            grid = grid_for_snippets(self.fps, self.stride_frames, self.clip_frames)
        else:
            grid = grid_for_frames(ann.duration, length)
        start, count, padded, item_grid, segments, labels = self._select(length, grid, ann, rng)
        tensor = torch.as_tensor(np.ascontiguousarray(features[:, start : start + count]), dtype=torch.float32)
        mask = torch.zeros(padded, dtype=torch.bool)
        mask[:count] = True
        return {"features": _pad_time(tensor, 1, padded), "mask": mask, **self._common_fields(ann, item_grid, segments, labels)}


# ------------------------------------------------------------------------------------------- batching, loading

# time dimension of the padded tensor fields (None: depends on the tensor's rank, see collate_tal)
_TIME_DIM = {"video": None, "frame_mask": 0, "features": 1, "mask": 0}


def collate_tal(batch: Sequence[dict[str, Any]], pad_multiple: int = 1) -> dict[str, Any]:
    """Stack items into a batch, padding the time axis to the longest item (rounded up to ``pad_multiple``).

    ``video`` (B, C, T, H, W) or (B, T, C, clip, H, W), ``frame_mask`` / ``mask`` (B, T) false on padding,
    ``features`` (B, C, T), ``duration`` float64 (B,), ``skipped`` one flat list; every other field (segments,
    labels, video ids, grids) becomes a list.
    """
    if not batch:
        raise ValueError("collate_tal got an empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key in _TIME_DIM:
            dim = _TIME_DIM[key]
            if dim is None:
                dim = 1 if values[0].ndim == 4 else 0
            longest = max(v.shape[dim] for v in values)
            longest = -(-longest // pad_multiple) * pad_multiple
            fill = False if values[0].dtype == torch.bool else 0
            out[key] = torch.stack([_pad_time(v, dim, longest, fill) for v in values])
        elif key == "duration":
            out[key] = torch.tensor(values, dtype=torch.float64)
        elif key == "skipped":
            out[key] = [vid for v in values for vid in v]
        else:
            out[key] = values
    return out


class EpochSampler(torch.utils.data.DistributedSampler):
    """A DistributedSampler (one replica unless distributed) that also hands the epoch to the dataset.

    The order is a function of ``(seed, epoch)``. Without :meth:`set_epoch` calls the epoch advances by itself on
    every pass; with them, the given epoch is used. For datasets with ``accepts_epoch_keys`` the indices are
    ``(index, epoch)`` pairs, so items drawn in worker processes know the epoch too.
    """

    def __init__(self, dataset, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0, drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.epoch_keys = bool(getattr(dataset, "accepts_epoch_keys", False))
        self._epoch_given = False
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._epoch_given = True

    def __iter__(self):
        if self._passes and not self._epoch_given:
            self.epoch += 1
        self._passes += 1
        self._epoch_given = False
        indices = list(super().__iter__())
        if self.epoch_keys:
            return iter([(i, self.epoch) for i in indices])
        return iter(indices)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy's and random's from it
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


def build_loader(
    dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    *,
    drop_last: bool = False,
    pad_multiple: int = 1,
    pin_memory: bool = False,
    collate_fn=None,
) -> torch.utils.data.DataLoader:
    """A deterministic DataLoader: the order depends on ``(seed, epoch)`` only (see :class:`EpochSampler`), worker
    processes are seeded from ``seed``, and with ``distributed`` each rank reads its own shard."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("build_loader(distributed=True) needs an initialised torch.distributed process group")
        sampler = EpochSampler(dataset, shuffle, seed, dist.get_world_size(), dist.get_rank(), drop_last)
    else:
        sampler = EpochSampler(dataset, shuffle, seed, drop_last=drop_last)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn or partial(collate_tal, pad_multiple=pad_multiple),
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        drop_last=drop_last,
        pin_memory=pin_memory,
    )
