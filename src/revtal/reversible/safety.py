"""Online safety for float reversible backprop: catch a stage whose reconstruction has gone bad, during training.

Float reconstruction is only as good as the current (α, β) and weights allow, and both change while finetuning
(the coefficient schedule moves them; the weights drift). :class:`ReconstructionMonitor` spot-checks one stage
every ``every`` steps, round-robin over the memory-free stages: the stage keeps its true input for that one
forward (one activation, once) and compares it with what its backward reconstructed. A relative error above
``tolerance`` is reported (a warning, or the trainer's logger) and that stage falls back to ``exact`` backprop
(lossless, still memory-free) or ``vanilla`` (stores activations). Every check and every switch is recorded for
the trainer's log, and the switches are part of :meth:`ReconstructionMonitor.state_dict` so a resumed run keeps
them.

Non-finite gradients need no monitor: the core raises ``NonFiniteGradientError`` naming the stage and (α, β) in
the backward that produced them.

Use::

    monitor = ReconstructionMonitor(model, every=100, tolerance=1e-3, fallback="exact")
    for step, batch in enumerate(loader):
        monitor.before_forward(step)
        loss = criterion(model(batch)); loss.backward()
        for event in monitor.after_backward():
            log(event.as_dict())
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from revtal.reversible.function import ReconstructionCheck
from revtal.reversible.stage import ReversibleStage, reversible_stages

FALLBACKS = ("exact", "vanilla")


class ReconstructionWarning(RuntimeWarning):
    """A reversible stage reconstructed its input worse than the monitor's tolerance."""


@dataclass
class ReconstructionEvent:
    """One stage switched to its fallback backprop."""

    step: int
    stage: str
    alpha: float
    beta: float
    relative_error: float
    max_abs_error: float
    tolerance: float
    previous: str  # the backprop mode before the switch
    fallback: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        return (
            f"step {self.step}: reversible stage {self.stage!r} reconstructed its input with relative error "
            f"{self.relative_error:.3g} > tolerance {self.tolerance:.3g} at alpha={self.alpha:.4g}, "
            f"beta={self.beta:.4g} ({self.previous} backprop); switched it to {self.fallback} backprop"
        )


@dataclass
class CheckRecord:
    """One verification (switch or not)."""

    step: int
    stage: str
    alpha: float
    beta: float
    relative_error: float


class ReconstructionMonitor:
    """Spot-check reconstruction every ``every`` steps and switch failing stages to ``fallback``.

    Stages already using the fallback (or vanilla) are not checked. ``logger``: a :class:`logging.Logger` to
    report switches to; without one they are issued as :class:`ReconstructionWarning`.
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 100,
        tolerance: float = 1e-3,
        fallback: str = "exact",
        logger: logging.Logger | None = None,
    ):
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"ReconstructionMonitor.every must be a positive integer, got {every!r}")
        if not tolerance > 0:
            raise ValueError(f"ReconstructionMonitor.tolerance must be > 0, got {tolerance!r}")
        if fallback not in FALLBACKS:
            raise ValueError(f"ReconstructionMonitor.fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.stages = reversible_stages(model)
        if not self.stages:
            raise ValueError(f"{type(model).__name__} has no reversible stages: convert it before monitoring")
        self.names = [stage.stage_name or f"stage{k}" for k, stage in enumerate(self.stages)]
        self.every, self.tolerance, self.fallback, self.logger = every, float(tolerance), fallback, logger
        self.events: list[ReconstructionEvent] = []
        self.history: list[CheckRecord] = []
        self._cursor = 0  # round-robin position among all stages
        self._armed: tuple[int, int, ReconstructionCheck | None] | None = None  # (step, stage index, check before)

    def _monitored(self, stage: ReversibleStage) -> bool:
        return stage.backprop not in ("vanilla", self.fallback)

    def before_forward(self, step: int) -> str | None:
        """On every ``every``-th step, arm the next monitored stage to verify its reconstruction in the coming
        backward; returns its name (None when nothing was armed)."""
        if step % self.every != 0:
            return None
        for offset in range(len(self.stages)):
            index = (self._cursor + offset) % len(self.stages)
            stage = self.stages[index]
            if self._monitored(stage):
                self._cursor = (index + 1) % len(self.stages)
                self._armed = (step, index, stage.last_check)
                stage.verify_next_backward()
                return self.names[index]
        return None

    def after_backward(self) -> list[ReconstructionEvent]:
        """Read the armed stage's verification (if its backward has run) and switch it when it failed; returns
        the new events (empty when all is well)."""
        if self._armed is None:
            return []
        step, index, previous_check = self._armed
        stage = self.stages[index]
        check = stage.last_check
        if check is None or check is previous_check:
            return []  # the stage has not run a memory-free backward since it was armed: keep waiting
        self._armed = None
        if check.simulated:  # a plan's step on tensors without values: nothing was measured
            return []
        name = self.names[index]
        self.history.append(CheckRecord(step, name, stage.alpha, stage.beta, check.relative_error))
        if check.relative_error <= self.tolerance:  # NaN compares False: falls through to the switch
            return []
        event = ReconstructionEvent(
            step=step,
            stage=name,
            alpha=stage.alpha,
            beta=stage.beta,
            relative_error=check.relative_error,
            max_abs_error=check.max_abs_error,
            tolerance=self.tolerance,
            previous=stage.backprop,
            fallback=self.fallback,
        )
        stage.set_backprop(self.fallback)
        self.events.append(event)
        if self.logger is not None:
            self.logger.warning(event.message())
        else:
            warnings.warn(event.message(), ReconstructionWarning, stacklevel=2)
        return [event]

    # ---------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "cursor": self._cursor,
            "events": [e.as_dict() for e in self.events],
            "history": [asdict(r) for r in self.history],
            "modes": {name: stage.backprop for name, stage in zip(self.names, self.stages)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the log and re-apply the fallbacks taken before the checkpoint."""
        modes = state.get("modes", {})
        unknown = set(modes) - set(self.names)
        if unknown:
            raise ValueError(f"monitor state names stage(s) {sorted(unknown)} that this model does not have ({self.names})")
        self._cursor = int(state.get("cursor", 0)) % len(self.stages)
        self.events = [ReconstructionEvent(**e) for e in state.get("events", [])]
        self.history = [CheckRecord(**r) for r in state.get("history", [])]
        self._armed = None
        for event in self.events:
            stage = self.stages[self.names.index(event.stage)]
            if stage.backprop != event.fallback:
                stage.set_backprop(event.fallback)
