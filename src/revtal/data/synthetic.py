"""Synthetic videos: revtal's embedded default dataset (untrimmed, and trimmed clips of the same classes) and ``revtal synth``.

Every video shows a slowly scrolling grey texture with a little per-frame noise, and 1..k non-overlapping action
instances. An instance is a saturated coloured square doing one *pattern* for its whole duration:

==========  ====================================================================================
pattern     what the square does (times in seconds, sizes as fractions of the frame side)
==========  ====================================================================================
up          drifts upwards at 0.2 frame/s, wrapping around the frame edge
down        drifts downwards at 0.2 frame/s
blink       alternates full colour / 35 % brightness every 0.5 s
steady      sits still at full colour
grow        side rises from 0.15 to 0.40 over 3 s, then restarts (sawtooth)
shrink      side falls from 0.40 to 0.15 over 3 s, then restarts
==========  ====================================================================================

Class ``c`` is pattern ``c % 6`` in colour ``c // 2``: the two classes of each pair (up/down, blink/steady,
grow/shrink) share a colour, so colour alone never separates them and a single frame cannot either (up/down and
grow/shrink are time reversals of each other; a blinking square's bright frames look like the steady one). A model
must use the order and change of frames — frozen per-frame features are not enough, the video backbone matters.
No pattern changes under a horizontal flip, so flip augmentation keeps labels valid. At most 20 classes (10
colours). Patterns are defined in seconds, so any frame rate shows the same motion; the slowest sampling that
keeps them distinguishable is about one frame per 0.75 s.

The background is grey (R = G = B), the squares saturated: "is an action on screen" is a colour-saturation test,
which survives the lossy codec (the round-trip test checks it), while "which action" needs time. Instance
boundaries are frame aligned: a segment ``[a / fps, b / fps]`` covers exactly frames ``a .. b-1`` (frame ``k`` is
displayed during ``[k / fps, (k + 1) / fps)``).

Everything is deterministic by seed; video ``i`` depends only on ``(seed, i)``, so asking for more videos keeps the
first ones unchanged.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.utils.data
from tqdm import tqdm

from revtal.data.annotations import AnnotationSet, VideoAnnotation, save_annotations

PATTERNS = ("up", "down", "blink", "steady", "grow", "shrink")
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (230, 40, 40)),
    ("green", (40, 200, 60)),
    ("blue", (50, 80, 240)),
    ("yellow", (230, 220, 40)),
    ("magenta", (220, 50, 220)),
    ("cyan", (40, 210, 220)),
    ("orange", (245, 140, 30)),
    ("purple", (140, 50, 220)),
    ("lime", (150, 240, 40)),
    ("pink", (250, 110, 170)),
)
MAX_CLASSES = 2 * len(COLOURS)

DRIFT_SPEED = 0.2  # frame sides per second (up / down)
BLINK_HALF_PERIOD_S = 0.5
DIM_BRIGHTNESS = 0.35
SAWTOOTH_PERIOD_S = 3.0
SIZE_RANGE = (0.15, 0.40)  # grow / shrink extremes, fraction of the frame side
BASE_SIZE = 0.25
BACKGROUND_RANGE = (60.0, 150.0)  # grey levels of the texture
NOISE_STD = 3.0


def class_pattern(class_id: int) -> str:
    return PATTERNS[_check_class(class_id) % len(PATTERNS)]


def class_colour(class_id: int) -> tuple[int, int, int]:
    return COLOURS[_check_class(class_id) // 2][1]


def class_name(class_id: int) -> str:
    """E.g. ``red_up``: colour and pattern, so a confusion matrix reads by itself."""
    return f"{COLOURS[_check_class(class_id) // 2][0]}_{class_pattern(class_id)}"


def class_names(num_classes: int) -> list[str]:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    return [class_name(c) for c in range(num_classes)]


def _check_class(class_id: int) -> int:
    if not 0 <= int(class_id) < MAX_CLASSES:
        raise ValueError(f"class_id must be in 0..{MAX_CLASSES - 1}, got {class_id}")
    return int(class_id)


# --------------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Instance:
    """One action instance in frame units, with the random look that stays fixed during it."""

    class_id: int
    start_frame: int
    end_frame: int  # exclusive
    x: float  # centre, fraction of the frame side
    y: float
    size: float  # side, fraction of the frame side (steady / blink / up / down)
    phase: float  # in [0, 1): where in its cycle the pattern starts


def _random_look(rng: np.random.Generator) -> dict:
    return {
        "x": float(rng.uniform(0.25, 0.75)),
        "y": float(rng.uniform(0.25, 0.75)),
        "size": float(BASE_SIZE * rng.uniform(0.85, 1.15)),
        "phase": float(rng.uniform(0.0, 1.0)),
    }


def _background(num_frames: int, size: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """A periodic smooth grey texture scrolling slowly in a random direction, plus noise: float32 (T, H, W)."""
    cells = 6
    coarse = rng.uniform(*BACKGROUND_RANGE, size=(cells, cells))
    span = 2 * size  # texture tile, twice the frame so the scroll shows new content
    coords = np.arange(span) * cells / span
    lo = np.floor(coords).astype(int) % cells
    hi = (lo + 1) % cells
    w = (coords - np.floor(coords))[:, None]
    # periodic bilinear interpolation: rows first, then columns
    rows = coarse[lo] * (1 - w) + coarse[hi] * w  # (span, cells)
    tile = rows[:, lo] * (1 - w.T) + rows[:, hi] * w.T  # (span, span)
    angle = rng.uniform(0, 2 * math.pi)
    speed = 0.03 * size  # pixels per second
    times = np.arange(num_frames) / fps
    dy = np.round(np.sin(angle) * speed * times).astype(int)
    dx = np.round(np.cos(angle) * speed * times).astype(int)
    idx = np.arange(size)
    frames = np.empty((num_frames, size, size), dtype=np.float32)
    for k in range(num_frames):
        frames[k] = tile[np.ix_((idx + dy[k]) % span, (idx + dx[k]) % span)]
    frames += rng.normal(0.0, NOISE_STD, size=frames.shape).astype(np.float32)
    return frames


def _draw(video: np.ndarray, inst: _Instance, fps: float) -> None:
    """Paint ``inst`` into ``video`` (float32 (T, H, W, 3)) over its frames."""
    size = video.shape[1]
    colour = np.asarray(class_colour(inst.class_id), dtype=np.float32)
    pattern = class_pattern(inst.class_id)
    for k in range(inst.start_frame, inst.end_frame):
        tau = (k - inst.start_frame) / fps  # seconds since the instance began
        x, y, side, brightness = inst.x, inst.y, inst.size, 1.0
        if pattern == "up":
            y = inst.y - DRIFT_SPEED * tau
        elif pattern == "down":
            y = inst.y + DRIFT_SPEED * tau
        elif pattern == "blink":
            on = int(tau / BLINK_HALF_PERIOD_S + 2 * inst.phase) % 2 == 0
            brightness = 1.0 if on else DIM_BRIGHTNESS
        elif pattern in ("grow", "shrink"):
            cycle = (tau / SAWTOOTH_PERIOD_S + inst.phase) % 1.0
            if pattern == "shrink":
                cycle = 1.0 - cycle
            side = SIZE_RANGE[0] + (SIZE_RANGE[1] - SIZE_RANGE[0]) * cycle
        side_px = max(2, int(round(side * size)))
        top = int(round(y * size - side_px / 2))
        left = int(round(x * size - side_px / 2))
        rows = np.arange(top, top + side_px) % size  # wrap around the edges (drifting squares re-enter)
        cols = np.arange(left, left + side_px) % size
        video[k][np.ix_(rows, cols)] = colour * brightness


def _render(num_frames: int, size: int, fps: float, instances: list[_Instance], rng: np.random.Generator) -> np.ndarray:
    grey = _background(num_frames, size, fps, rng)
    video = np.repeat(grey[..., None], 3, axis=-1)
    for inst in instances:
        _draw(video, inst, fps)
    return np.clip(np.round(video), 0, 255).astype(np.uint8)


def render_action_clip(
    class_id: int | None, num_frames: int, size: int, rng: np.random.Generator, fps: float = 8.0
) -> np.ndarray:
    """A clip of ``num_frames`` frames (``fps``) showing one action throughout; ``class_id=None`` → background only.

    Position, size and phase are random (from ``rng``), so clips of a class vary. Returns uint8 (T, H, W, 3).
    """
    if num_frames <= 0 or size <= 0:
        raise ValueError(f"num_frames and size must be positive, got {num_frames}, {size}")
    instances = []
    if class_id is not None:
        instances.append(_Instance(_check_class(class_id), 0, num_frames, **_random_look(rng)))
    return _render(num_frames, size, fps, instances, rng)


def _place_instances(
    num_frames: int,
    fps: float,
    num_classes: int,
    max_instances: int,
    short_range: tuple[float, float],
    long_range: tuple[float, float],
    rng: np.random.Generator,
) -> list[_Instance]:
    """1..max_instances non-overlapping instances, half short and half long, separated by at least a second."""
    duration = num_frames / fps
    gap = 1.0
    count = int(rng.integers(1, max_instances + 1))
    lengths = [float(rng.uniform(*(short_range if rng.random() < 0.5 else long_range))) for _ in range(count)]
    while lengths and sum(lengths) + gap * (len(lengths) + 1) > duration:
        if len(lengths) > 1:
            lengths.pop()
        else:
            lengths[0] = max(min(lengths[0], duration - 2 * gap), min(short_range[0], duration / 2))
            break
    free = max(0.0, duration - sum(lengths) - gap * (len(lengths) + 1))
    spare = rng.dirichlet(np.ones(len(lengths) + 1)) * free
    instances = []
    t = 0.0
    for length, extra in zip(lengths, spare):
        t += gap + extra
        start = int(round(t * fps))
        end = min(num_frames, max(start + 1, int(round((t + length) * fps))))
        t += length
        if start >= num_frames:
            break
        instances.append(_Instance(int(rng.integers(num_classes)), start, end, **_random_look(rng)))
    return instances


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 17, gop_s: float = 2.0) -> None:
    """Encode uint8 RGB frames (T, H, W, 3) as H.264 mp4 (MPEG-4 part 2 when no H.264 encoder is available).

    Frame ``k`` gets presentation time ``k / fps``; a keyframe at least every ``gop_s`` seconds keeps seeks short.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"{path}: yuv420p needs even frame sizes, got {width}x{height}")
    rate = _fps_fraction(fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    codec = _encoder()
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        gop = str(max(1, int(round(gop_s * fps))))
        if codec == "libx264":
            # mbtree=0: x264's macroblock-tree rate control (SIMD path) encodes the same frames into different
            # bitstreams from run to run, even single-threaded, so two generations of the dataset differed
            # and so did every training on them; without it the output is bitwise repeatable (asm=0 also is)
            stream.options = {"crf": str(crf), "preset": "veryfast", "g": gop, "keyint_min": gop,
                              "x264-params": "mbtree=0"}
        else:
            stream.options = {"qscale": "2", "g": gop}
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _fps_fraction(fps: float):
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def _encoder() -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises different types for an unknown codec across versions
            continue
    raise RuntimeError("this PyAV build has neither the libx264 nor the mpeg4 encoder")


def generate_dataset(
    out_dir: str | os.PathLike,
    num_videos: int = 64,
    num_classes: int = 6,
    seed: int = 0,
    size: int = 64,
    fps: float = 8.0,
    duration_range: tuple[float, float] = (20.0, 60.0),
    *,
    max_instances: int = 4,
    short_range: tuple[float, float] = (1.5, 4.0),
    long_range: tuple[float, float] = (5.0, 16.0),
    val_fraction: float = 0.25,
    progress: bool = True,
) -> Path:
    """Write ``out_dir/videos/*.mp4`` and ``out_dir/annotations.json`` (ActivityNet layout, "training" and
    "validation" subsets, a top-level ``classes`` list); returns ``out_dir``."""
    names = class_names(num_classes)
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    low, high = duration_range
    if not 0 < low <= high:
        raise ValueError(f"duration_range must satisfy 0 < min <= max, got {duration_range}")
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    num_val = min(num_videos - 1, max(1, round(num_videos * val_fraction))) if num_videos > 1 else 0
    val_ids = set(np.random.default_rng([seed, 1_000_003]).permutation(num_videos)[:num_val].tolist())

    videos: dict[str, VideoAnnotation] = {}
    for i in tqdm(range(num_videos), desc="synth videos", disable=not progress):
        rng = np.random.default_rng([seed, i])
        num_frames = max(1, int(round(rng.uniform(low, high) * fps)))
        instances = _place_instances(num_frames, fps, num_classes, max_instances, short_range, long_range, rng)
        frames = _render(num_frames, size, fps, instances, rng)
        video_id = f"synth_{i:05d}"
        write_video(out / "videos" / f"{video_id}.mp4", frames, fps)
        videos[video_id] = VideoAnnotation(
            video_id=video_id,
            subset="validation" if i in val_ids else "training",
            duration=num_frames / fps,
            segments=np.array([[s.start_frame / fps, s.end_frame / fps] for s in instances]).reshape(-1, 2),
            labels=np.array([s.class_id for s in instances], dtype=np.int64),
            fps=float(fps),
        )
    save_annotations(out / "annotations.json", AnnotationSet(classes=names, videos=videos))
    return out


def generate_clip_dataset(
    out_dir: str | os.PathLike,
    num_classes: int = 4,
    train_per_class: int = 24,
    val_per_class: int = 8,
    seed: int = 0,
    size: int = 32,
    fps: float = 4.0,
    duration_range: tuple[float, float] = (4.0, 8.0),
    *,
    progress: bool = True,
) -> Path:
    """Trimmed clips of the same classes as :func:`generate_dataset` (one action from the first frame to the last):
    ``out_dir/clips/{train,val}_NNNNN.mp4``, the lists ``train.csv`` and ``val.csv`` in VideoMAE's format (``path
    label`` per line, paths relative to ``out_dir``) and ``classes.txt`` (one name per line, index order).
    Clip ``i`` of a split depends only on ``(seed, split, i)``; labels cycle through the classes."""
    names = class_names(num_classes)
    low, high = duration_range
    if not 0 < low <= high:
        raise ValueError(f"duration_range must satisfy 0 < min <= max, got {duration_range}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(f"need at least one clip per class and split, got {train_per_class}, {val_per_class}")
    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    jobs = [(split, code, i) for split, code, per_class in (("train", 1, train_per_class), ("val", 2, val_per_class))
            for i in range(per_class * num_classes)]
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for split, code, i in tqdm(jobs, desc="synth clips", disable=not progress):
        rng = np.random.default_rng([seed, code, i])
        label = i % num_classes
        num_frames = max(2, int(round(rng.uniform(low, high) * fps)))
        frames = render_action_clip(label, num_frames, size, rng, fps=fps)
        name = f"clips/{split}_{i:05d}.mp4"
        write_video(out / name, frames, fps)
        lines[split].append(f"{name} {label}")
    for split, entries in lines.items():
        (out / f"{split}.csv").write_text("\n".join(entries) + "\n", encoding="utf-8")
    (out / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------- clip dataset


class SyntheticClipDataset(torch.utils.data.Dataset):
    """Trimmed clips for pretraining a backbone on clip classification, rendered on the fly (nothing stored).

    Item ``i`` is ``(clip, label)``: ``clip`` float32 (C, T, H, W) in [0, 1] (or whatever ``transform`` makes of
    it), ``label`` an int. With ``background_class=True`` there are ``num_classes + 1`` labels, the last one
    (``num_classes``) being texture without any action; otherwise every clip shows an action. Labels cycle through
    the classes (balanced); the look of item ``i`` depends only on ``(seed, i)``. ``fps`` should match the rate at
    which the backbone will see frames in the TAL task (e.g. ``num_frames / duration`` of evenly sampled videos).
    Clips are not passed through the video codec.
    """

    def __init__(
        self,
        num_classes: int,
        num_frames: int = 16,
        size: int = 64,
        length: int = 1024,
        seed: int = 0,
        *,
        background_class: bool = False,
        fps: float = 8.0,
        transform=None,
    ):
        class_names(num_classes)  # validates the count
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.num_classes = num_classes
        self.num_labels = num_classes + int(background_class)
        self.background_class = background_class
        self.num_frames, self.size, self.length, self.seed, self.fps = num_frames, size, length, seed, fps
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        label = index % self.num_labels
        rng = np.random.default_rng([self.seed, index])
        class_id = None if label == self.num_classes else label
        frames = render_action_clip(class_id, self.num_frames, self.size, rng, fps=self.fps)
        clip = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(255.0)
        if self.transform is not None:
            clip = self.transform(clip)
        return clip, label
