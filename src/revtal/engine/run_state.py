"""Run state (training checkpoints, ``last.pt`` / ``best.pt``): full state, atomic writes, exact resume — and the one module that knows their layout.

A checkpoint holds everything a run needs to continue bit-for-bit on CPU: model, optimizer, LR scheduler, AMP
scaler, EMA weights, the training mode's state (the Dr²Net coefficient schedule, the reconstruction monitor),
random-generator states (torch, CUDA, numpy, python), the epoch/step counters, the class names and the run's
config. It is written to a temporary file in the same directory and renamed over the target, so a crash mid-write
never leaves a truncated ``last.pt``. :func:`training_state` writes that layout and :class:`TrainingCheckpoint`
reads it (resume, evaluation, extraction, detection): nothing else indexes into a checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revtal.backbones.weights import load_model_state
from revtal.engine.config import config_from_dict
from revtal.reversible.convert import set_coefficients
from revtal.utils.io import atomic_write


def atomic_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_epoch_end(out_dir: Path, state: dict, metric: float | None, best_metric: float) -> float:
    """Write ``last.pt``, and ``best.pt`` when ``metric`` beats ``best_metric`` (each atomically: an interrupted
    write never leaves a truncated checkpoint); returns the best metric so far."""
    if metric is not None and metric > best_metric:
        best_metric = metric
        state["best_metric"] = metric
        atomic_save(state, out_dir / "best.pt")
    atomic_save(state, out_dir / "last.pt")
    return best_metric


def epoch_line(stats: Any, metric_text: str | None) -> str:
    """The one line a trainer prints after an epoch: loss, step time, (α, β) and the metric, when there are any."""
    line = f"epoch {stats.epoch + 1}: loss {stats.loss:.4f}, step {stats.step_time_s * 1000:.0f} ms"
    if stats.alpha is not None:
        line += f", alpha {stats.alpha:.3f} beta {stats.beta:.4f}"
    return line + (f", {metric_text}" if metric_text else "")


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


REQUIRED_KEYS = ("model", "config", "classes")


def training_state(*, model, optimizer, lr_schedule, scaler, ema, mode_hooks, epoch: int, step: int,
                   best_metric: float, classes: list[str], config) -> dict:
    """The checkpoint of a training run (the layout :class:`TrainingCheckpoint` reads)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "mode": mode_hooks.state_dict(),
        "rng": rng_state(),
        "epoch": epoch,
        "step": step,
        "best_metric": best_metric,
        "classes": list(classes),
        "config": config.to_dict(),
    }


class TrainingCheckpoint:
    """A revtal training checkpoint read from ``path``; a file that is not one raises naming the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.state = load_checkpoint(self.path)
        missing = [k for k in REQUIRED_KEYS if not isinstance(self.state, dict) or k not in self.state]
        if missing:
            raise ValueError(f"{self.path}: not a revtal training checkpoint (no {missing[0]!r} entry)")

    @property
    def classes(self) -> list[str]:
        return list(self.state["classes"])

    def config(self):
        """The run's config, as it was saved with the weights."""
        return config_from_dict(self.state["config"], source=f"{self.path} (embedded config)")

    @property
    def mode_state(self) -> dict:
        """The training mode's state (:class:`~revtal.engine.modes.ModeHooks`); checkpoints written before it was
        one entry kept its parts at the top level."""
        if "mode" in self.state:
            return self.state["mode"] or {}
        return {key: self.state.get(key) for key in ("coefficients", "monitor")}

    def inference_weights(self) -> dict:
        """The model weights to run: the EMA average when the run kept one, else the trained weights."""
        ema = self.state.get("ema")
        return ema["shadow"] if ema else self.state["model"]

    def trained_coefficients(self) -> tuple[float, float] | None:
        """(α, β) of the last training step of a coefficient schedule, or None (no schedule)."""
        last = (self.mode_state.get("coefficients") or {}).get("last_applied")
        return (last["alpha"], last["beta"]) if last else None

    def restore_training(self, *, model, optimizer, lr_schedule, scaler, ema, mode_hooks) -> dict:
        """Put a training run back where this checkpoint left it (everything :func:`training_state` saved, random
        generators included); returns the counters ``{"epoch", "step", "best_metric"}``."""
        state = self.state
        load_model_state(model, state["model"], source=str(self.path),
                         hint="resume with the config the checkpoint was trained with (the default of --resume)")
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        mode_hooks.load_state_dict(self.mode_state)
        set_rng_state(state["rng"])
        return {"epoch": state["epoch"], "step": state["step"], "best_metric": state["best_metric"]}

    def restore_model(self, model) -> None:
        """Load :meth:`inference_weights` into ``model`` and put it at the trained coefficients."""
        load_model_state(model, self.inference_weights(), source=str(self.path),
                         hint="the model is built from the checkpoint's own config")
        coefficients = self.trained_coefficients()
        if coefficients is not None:
            set_coefficients(model, *coefficients)
