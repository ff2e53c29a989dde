"""Datasets for the trainer: the configured annotations, or the embedded synthetic dataset generated on first use."""

from __future__ import annotations

from pathlib import Path

from revtal.data.annotations import AnnotationSet, load_annotations
from revtal.engine import distributed as dist_utils
from revtal.engine.config import Config


def synthetic_dir(config: Config, out_dir: Path) -> Path:
    s = config.data.synthetic
    return out_dir / "data" / f"synthetic_v{s.videos}_c{s.classes}_s{s.seed}_{s.size}px_{s.fps:g}fps"


def prepare_annotations(config: Config, out_dir: Path) -> AnnotationSet:
    """Load the configured annotations; with none configured, generate (rank 0) and use the synthetic set."""
    data = config.data
    if not data.annotations:
        from revtal.data.synthetic import generate_dataset

        s = data.synthetic
        root = synthetic_dir(config, out_dir)
        if dist_utils.is_main() and not (root / "annotations.json").exists():
            generate_dataset(
                root, num_videos=s.videos, num_classes=s.classes, seed=s.seed, size=s.size, fps=s.fps,
                duration_range=(s.min_duration, s.max_duration),
            )
        dist_utils.barrier()
        data.annotations = str(root / "annotations.json")
        data.video_dir = str(root / "videos")
    if not data.video_dir and not data.features_dir:
        raise ValueError("data.video_dir is empty: set it to the folder holding the videos of data.annotations")
    return load_annotations(data.annotations)


def build_datasets(config: Config, annotations: AnnotationSet):
    from revtal.data.crop import THUMOS_CROP_RATIO
    from revtal.data.dataset import FeatureTALDataset, VideoTALDataset

    d = config.data
    crop = dict(window=d.max_seq_len, trunc_thresh=d.trunc_thresh)
    if d.features_dir:
        ratio = THUMOS_CROP_RATIO if d.crop_ratio is None else d.crop_ratio
        return tuple(
            FeatureTALDataset(d.features_dir, annotations, subset, train=train, seed=config.train.seed,
                              skip_bad_videos=d.skip_bad_videos, crop_ratio=ratio, **crop)
            for subset, train in ((d.train_subset, True), (d.val_subset, False))
        )

    def make(subset: str, train: bool):
        return VideoTALDataset(
            annotations, d.video_dir, subset, mode=d.mode, num_frames=d.num_frames, img_size=d.img_size,
            train=train, skip_bad_videos=d.skip_bad_videos, seed=config.train.seed, mean=d.mean, std=d.std,
            cache_mb=d.cache_mb, crop_ratio=d.crop_ratio, **crop,
        )

    return make(d.train_subset, True), make(d.val_subset, False)


def make_loader(dataset, config: Config, train: bool, rank: int = 0, world: int = 1):
    from revtal.data.dataset import build_loader

    return build_loader(
        dataset, batch_size=config.data.batch_size, shuffle=train, num_workers=config.data.num_workers,
        seed=config.train.seed, distributed=train and world > 1,
    )
