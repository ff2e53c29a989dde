"""Video transforms: one set of random parameters for every frame of a clip."""

import numpy as np
import pytest
import torch

from revtal.data.transforms import (
    CenterCrop,
    ColorJitter,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    build_transforms,
    to_float_video,
)


def _clip(frames=6, height=24, width=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, frames, height, width, generator=g)


def test_train_pipeline_identical_frames_stay_identical():
    frame = _clip(frames=1)
    video = frame.repeat(1, 8, 1, 1)
    transform = build_transforms(True, 16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), color_jitter=(0.4, 0.4, 0.4, 0.1))
    for seed in range(5):
        out = transform(video, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 8, 16, 16)
        for t in range(1, 8):
            assert torch.equal(out[:, t], out[:, 0])


@pytest.mark.parametrize(
    "transform",
    [RandomResizedCrop(12, scale=(0.2, 0.9)), RandomHorizontalFlip(1.0), ColorJitter(0.4, 0.4, 0.4, 0.1)],
    ids=["crop", "flip", "jitter"],
)
def test_each_frame_gets_the_same_mapping(transform):
    """Transforming the clip equals transforming each frame alone with the clip's parameters."""
    video = _clip()
    params = transform.get_params(video, torch.Generator().manual_seed(3))
    whole = transform.apply(video, params)
    for t in range(video.shape[1]):
        alone = transform.apply(video[:, t : t + 1], params)
        torch.testing.assert_close(whole[:, t : t + 1], alone, rtol=0, atol=1e-6)


def test_crop_box_geometry_and_generator_determinism():
    video = torch.arange(20 * 30, dtype=torch.float32).view(1, 1, 20, 30).repeat(3, 2, 1, 1)
    crop = RandomResizedCrop((10, 10), scale=(0.25, 0.5), ratio=(0.5, 2.0))
    for seed in range(20):
        top, left, h, w = crop.get_params(video, torch.Generator().manual_seed(seed))
        assert 0 <= top and top + h <= 20 and 0 <= left and left + w <= 30
        assert 0.25 * 600 * 0.8 <= h * w <= 0.5 * 600 * 1.2  # rounding of the side lengths
    a = crop(video, torch.Generator().manual_seed(7))
    b = crop(video, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    # a crop of the full frame at the same size is the identity
    full = RandomResizedCrop((20, 30)).apply(video, (0, 0, 20, 30))
    assert torch.equal(full, video)


def test_flip_reverses_columns_and_probability_zero_keeps():
    video = _clip()
    assert torch.equal(RandomHorizontalFlip(1.0)(video), video[..., torch.arange(31, -1, -1)])
    assert torch.equal(RandomHorizontalFlip(0.0)(video), video)


def test_colour_jitter_hand_values():
    video = torch.full((3, 2, 2, 2), 0.5)
    video[0] = 0.8
    bright = ColorJitter().apply(video, [("brightness", 1.5)])
    torch.testing.assert_close(bright[0], torch.ones(2, 2, 2))  # 0.8 * 1.5 clamps to 1
    torch.testing.assert_close(bright[1], torch.full((2, 2, 2), 0.75))
    grey = float(0.299 * 0.8 + 0.587 * 0.5 + 0.114 * 0.5)
    desaturated = ColorJitter().apply(video, [("saturation", 0.0)])
    torch.testing.assert_close(desaturated, torch.full_like(video, grey))
    flat = ColorJitter().apply(video, [("contrast", 0.0), ("_clip_mean", 0.3)])
    torch.testing.assert_close(flat, torch.full_like(video, 0.3))
    # a full hue turn is the identity; the grey level survives any rotation
    torch.testing.assert_close(ColorJitter().apply(video, [("hue", 0.5), ("hue", 0.5)]), video, atol=1e-5, rtol=0)
    rotated = ColorJitter().apply(torch.full((3, 1, 1, 1), 0.4), [("hue", 0.2)])
    torch.testing.assert_close(rotated, torch.full((3, 1, 1, 1), 0.4), atol=1e-5, rtol=0)


def test_eval_pipeline_resize_centre_crop_normalise():
    frames = np.zeros((2, 20, 40, 3), dtype=np.uint8)
    frames[:, :, 8:32] = 255  # a white band in the middle columns
    video = to_float_video(frames)
    assert video.shape == (3, 2, 20, 40) and video.dtype == torch.float32
    out = build_transforms(False, 10, mean=(0.5,) * 3, std=(0.5,) * 3)(video)
    assert out.shape == (3, 2, 10, 10)
    # the centre crop of the resized frame is inside the white band: 1 normalised to (1 - .5) / .5
    torch.testing.assert_close(out, torch.ones_like(out))
    assert Resize(8)(video).shape == (3, 2, 8, 16)
    assert Resize((5, 7))(video).shape == (3, 2, 5, 7)
    centre = CenterCrop((4, 28))(video)  # columns 6..33: black 6..7, white 8..31, black 32..33
    assert centre[0, 0, 0].tolist() == [0.0] * 2 + [1.0] * 24 + [0.0] * 2
    with pytest.raises(ValueError, match="larger than the frames"):
        CenterCrop(50)(video)


def test_normalise_and_bad_inputs():
    video = torch.full((3, 1, 2, 2), 0.5)
    out = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))(video)
    assert out[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.25]
    with pytest.raises(ValueError, match="float tensor"):
        RandomHorizontalFlip()(torch.zeros(3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        Normalize((0.5,) * 3, (0.5,) * 3)(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(8, scale=(0.5, 1.5))
