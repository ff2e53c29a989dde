"""Training checkpoints: full state, atomic writes, exact resume.

A checkpoint holds everything a run needs to continue bit-for-bit on CPU: model, optimizer, LR scheduler, AMP
scaler, EMA weights, the Dr²Net coefficient schedule, random-generator states (torch, CUDA, numpy, python) and the
epoch/step counters. It is written to a temporary file in the same directory and renamed over the target, so a
crash mid-write never leaves a truncated ``last.pt``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revtal.utils.io import atomic_write


def atomic_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable revtal checkpoint ({type(err).__name__}: {err})") from None


def apply_trained_coefficients(model, state: dict) -> None:
    """Put a Dr²Net model at the (α, β) it was last trained with (the schedule's ``last_applied`` in ``state``);
    a checkpoint without a schedule leaves the model's coefficients as built."""
    last = ((state.get("mode") or {}).get("coefficients") or {}).get("last_applied")
    if last:
        from revtal.reversible import set_coefficients

        set_coefficients(model, last["alpha"], last["beta"])
