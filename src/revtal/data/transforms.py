"""Temporally consistent video transforms on float tensors shaped (C, T, H, W).

A video augmentation must treat the clip as one image that happens to have a time axis: every random transform
draws its parameters once per call (:meth:`get_params`) and applies the same crop box, flip and colour change to
every frame (:meth:`apply`); otherwise the network would see jitter that the real video does not contain. Random
draws come from an explicit ``torch.Generator`` when given, which lets a dataset make each item's augmentation a
function of ``(seed, epoch, index)`` regardless of worker processes.

Colour transforms expect values in [0, 1] (``to_float_video`` of uint8 frames) and keep them there; normalisation
comes last. Colour jitter's contrast uses the mean grey level of the whole clip, so even that step is one fixed
pixel-value mapping shared by all frames. Hue jitter rotates the chroma plane of YIQ (a linear approximation of an
HSV hue shift); it is off by default because colour is part of the class identity of the synthetic dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_GREY_WEIGHTS = (0.299, 0.587, 0.114)


def to_float_video(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 frames (T, H, W, C) → float32 (C, T, H, W) in [0, 1]."""
    video = torch.as_tensor(frames)
    if video.ndim != 4:
        raise ValueError(f"expected frames shaped (T, H, W, C), got {tuple(video.shape)}")
    return video.permute(3, 0, 1, 2).float().div_(255.0)


def _check_video(video: Tensor) -> None:
    if not isinstance(video, Tensor) or video.ndim != 4 or not video.is_floating_point():
        shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"video transforms expect a float tensor (C, T, H, W), got {shape}")


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _resize(video: Tensor, height: int, width: int) -> Tensor:
    """Bilinear (antialiased when shrinking) resize of every frame of (C, T, H, W)."""
    if video.shape[-2:] == (height, width):
        return video
    frames = video.transpose(0, 1)  # (T, C, H, W): frames as the batch
    shrinking = height < video.shape[-2] or width < video.shape[-1]
    out = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)
    return out.transpose(0, 1).contiguous()


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class VideoTransform:
    """Base: ``__call__`` draws parameters once and applies them to all frames."""

    def get_params(self, video: Tensor, generator: torch.Generator | None = None):
        return None

    def apply(self, video: Tensor, params) -> Tensor:
        raise NotImplementedError

    def __call__(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_video(video)
        return self.apply(video, self.get_params(video, generator))


class Compose(VideoTransform):
    def __init__(self, transforms: Sequence[VideoTransform]):
        self.transforms = list(transforms)

    def __call__(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for transform in self.transforms:
            video = transform(video, generator)
        return video

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class RandomResizedCrop(VideoTransform):
    """One random box (area fraction in ``scale``, aspect ratio in ``ratio``) cut from every frame, resized to ``size``."""

    def __init__(self, size: int | Sequence[int], scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size = _pair(size)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def get_params(self, video: Tensor, generator=None) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop box."""
        height, width = video.shape[-2:]
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * _uniform(generator, *self.scale)
            aspect = math.exp(_uniform(generator, *log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=generator))
                left = int(torch.randint(0, width - w + 1, (), generator=generator))
                return top, left, h, w
        # No box fits after 10 draws (extreme aspect ratios): the largest centred box with a ratio in range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, video: Tensor, params) -> Tensor:
        top, left, h, w = params
        return _resize(video[..., top : top + h, left : left + w], *self.size)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip(VideoTransform):
    def __init__(self, p: float = 0.5):
        self.p = p

    def get_params(self, video: Tensor, generator=None) -> bool:
        return float(torch.rand((), generator=generator)) < self.p

    def apply(self, video: Tensor, flip: bool) -> Tensor:
        return video.flip(-1) if flip else video

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _grey(video: Tensor) -> Tensor:
    weights = torch.tensor(_GREY_WEIGHTS, dtype=video.dtype, device=video.device).view(3, 1, 1, 1)
    return (video * weights).sum(0, keepdim=True)


class ColorJitter(VideoTransform):
    """Brightness, contrast, saturation (factors in ``[1 - x, 1 + x]``) and hue (shift in ``[-h, h]`` turns), applied
    in one random order, all drawn once per clip. Input and output in [0, 1], 3 channels RGB."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0 <= value <= 1:
                raise ValueError(f"ColorJitter.{name} must be in [0, 1], got {value}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"ColorJitter.hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def get_params(self, video: Tensor, generator=None) -> list[tuple[str, float]]:
        ops = []
        for name, amount in (("brightness", self.brightness), ("contrast", self.contrast), ("saturation", self.saturation)):
            if amount > 0:
                ops.append((name, _uniform(generator, 1 - amount, 1 + amount)))
        if self.hue > 0:
            ops.append(("hue", _uniform(generator, -self.hue, self.hue)))
        order = torch.randperm(len(ops), generator=generator).tolist() if ops else []
        params = [ops[i] for i in order]
        if any(name == "contrast" for name, _ in params):
            # the clip-wide mean grey makes contrast the same value mapping in every frame
            params.append(("_clip_mean", float(_grey(video).mean())))
        return params

    def apply(self, video: Tensor, params) -> Tensor:
        if video.shape[0] != 3:
            raise ValueError(f"ColorJitter needs 3 colour channels, got {video.shape[0]}")
        clip_mean = dict(params).get("_clip_mean")
        for name, value in params:
            if name == "brightness":
                video = (video * value).clamp(0, 1)
            elif name == "contrast":
                video = (value * video + (1 - value) * clip_mean).clamp(0, 1)
            elif name == "saturation":
                video = (value * video + (1 - value) * _grey(video)).clamp(0, 1)
            elif name == "hue":
                video = _rotate_hue(video, value).clamp(0, 1)
        return video

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, hue={self.hue})"


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(video: Tensor, turns: float) -> Tensor:
    angle = 2 * math.pi * turns
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    to_yiq = _RGB_TO_YIQ
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
    return torch.einsum("ij,jthw->ithw", matrix.to(video), video)


class Normalize(VideoTransform):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"Normalize needs one positive std per mean, got mean={mean}, std={std}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def apply(self, video: Tensor, params=None) -> Tensor:
        if video.shape[0] != len(self.mean):
            raise ValueError(f"Normalize has {len(self.mean)} channels' statistics, the video has {video.shape[0]}")
        mean = torch.tensor(self.mean, dtype=video.dtype, device=video.device).view(-1, 1, 1, 1)
        std = torch.tensor(self.std, dtype=video.dtype, device=video.device).view(-1, 1, 1, 1)
        return (video - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class Resize(VideoTransform):
    """An int sets the shorter side (aspect kept); a pair sets (height, width)."""

    def __init__(self, size: int | Sequence[int]):
        self.size = size

    def apply(self, video: Tensor, params=None) -> Tensor:
        height, width = video.shape[-2:]
        if isinstance(self.size, int):
            scale = self.size / min(height, width)
            return _resize(video, max(1, round(height * scale)), max(1, round(width * scale)))
        return _resize(video, *_pair(self.size))

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class CenterCrop(VideoTransform):
    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def apply(self, video: Tensor, params=None) -> Tensor:
        height, width = video.shape[-2:]
        h, w = self.size
        if h > height or w > width:
            raise ValueError(f"CenterCrop({h}, {w}) is larger than the frames ({height}, {width}); resize first")
        top, left = (height - h) // 2, (width - w) // 2
        return video[..., top : top + h, left : left + w]

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


def build_transforms(
    train: bool,
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.0),
) -> Compose:
    """Training: random resized crop, horizontal flip, colour jitter, normalise. Evaluation: resize the shorter
    side to ``img_size``, centre crop, normalise. Output (C, T, img_size, img_size).

    The default crop keeps at least 60 % of the frame area: a TAL label says the action happens somewhere in the
    frame for the whole segment, and an aggressive crop can cut the actor out while the label stays."""
    if train:
        steps: list[VideoTransform] = [RandomResizedCrop(img_size, scale=scale, ratio=ratio)]
        if flip_p > 0:
            steps.append(RandomHorizontalFlip(flip_p))
        if color_jitter is not None and any(color_jitter):
            steps.append(ColorJitter(*color_jitter))
    else:
        steps = [Resize(img_size), CenterCrop(img_size)]
    steps.append(Normalize(mean, std))
    return Compose(steps)


def spatial_crops(video: Tensor, size: int, num_crops: int) -> list[Tensor]:
    """``num_crops`` square ``size`` crops of (C, T, H, W) frames whose shorter side is ``size``: 1 is the centre,
    3 are spread along the longer side (start, centre, end), as VideoMAE and SlowFast test."""
    _check_video(video)
    height, width = video.shape[-2:]
    if min(height, width) < size:
        raise ValueError(f"spatial_crops({size}) needs frames of at least {size} px, got ({height}, {width})")
    if num_crops == 1:
        return [CenterCrop(size)(video)]
    if num_crops != 3:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    centre_top, centre_left = (height - size) // 2, (width - size) // 2
    if width >= height:
        boxes = [(centre_top, left) for left in (0, centre_left, width - size)]
    else:
        boxes = [(top, centre_left) for top in (0, centre_top, height - size)]
    return [video[..., top : top + size, left : left + size] for top, left in boxes]
