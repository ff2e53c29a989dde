"""Dr²Net's dynamic finetuning: move the coefficients of every reversible stage from the pretrained network's
neighbourhood towards a numerically stable reversible network while training.

Training starts near the original residual network (α=1 keeps the pretrained behaviour, a small β adds little of
the reversible residual) where float reconstruction is poor, and ends at a point where it is accurate (smaller α,
larger β). :class:`CoefficientSchedule` defines the path:

Progress. Time is counted in the schedule's ``unit`` and quantised to multiples of ``every`` (η), so values change
only every η iterations or epochs. With ``T`` the end point's time (``end_epoch`` τ epochs, i.e.
``τ · iters_per_epoch`` iterations for ``unit="iteration"``) and ``t`` the current time (``epoch``, or the global
iteration ``epoch · iters_per_epoch + iteration``)::

    p = 1                      if t ≥ T   (the end point is reached at τ and held afterwards)
    p = η · ⌊t / η⌋ / T        otherwise

Policy (the interpolation weight w = shape(p), with w(0) = 0, w(1) = 1, increasing; k = ``curvature``)::

    linear        w = p
    exponential   w = (e^{k·p} − 1) / (e^k − 1)        slow start, fast finish
    logarithmic   w = ln(1 + k·p) / ln(1 + k)          fast start, slow finish

Order (which coefficient moves when)::

    simultaneous  w_α = w_β = shape(p)
    alpha_first   w_α = shape(min(1, 2p)),  w_β = shape(max(0, 2p − 1))
    beta_first    the same with α and β swapped

and α = (1 − w_α)·α0 + w_α·α_end, β = (1 − w_β)·β0 + w_β·β_end (exact at both ends).

Values are pure functions of (epoch, iteration): every DDP rank computes the same numbers without communicating,
and resuming from a checkpoint continues exactly (the state holds the configuration and a measured end point).

End point ``"auto"``: (α_end, β_end) is the far end of a search path; :meth:`CoefficientSchedule.calibrate`
measures the gradient error of memory-free backprop (:mod:`revtal.reversible.diagnostics`) on the actual model and
input at points along the path, once before training, and the first point whose ``atol_level`` is within the
tolerance becomes the end point (reached at τ as usual).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from revtal.reversible.convert import set_coefficients
from revtal.reversible.diagnostics import compare_gradients
from revtal.reversible.exact import nearest_dyadic, storage_bits_per_branch
from revtal.reversible.stage import reversible_stages

POLICIES = ("linear", "exponential", "logarithmic")
ORDERS = ("simultaneous", "alpha_first", "beta_first")
UNITS = ("iteration", "epoch")
END_MODES = ("fixed", "auto")

# The papers' recipes (Dr²Net): start (1, 0.1), end (0.3, 0.7); η and τ per task.
PRESETS: dict[str, dict[str, Any]] = {
    # temporal action detection: update every 3 epochs, end point at epoch 10 (of 20)
    "tad": dict(every=3, unit="epoch", end_epoch=10),
    # action recognition and detection: update every 2 iterations, end point at epoch 5
    "recognition": dict(every=2, unit="iteration", end_epoch=5),
    # point-cloud tasks: update every 10 iterations, end point at epoch 50
    "point_cloud": dict(every=10, unit="iteration", end_epoch=50),
}


@dataclass
class AutoEndReport:
    """What :meth:`CoefficientSchedule.calibrate` measured and chose."""

    alpha: float
    beta: float
    atol_level: float
    tolerance: float
    met: bool  # False when no point met the tolerance and the far end of the path was kept
    backprop: str
    measured: list[dict[str, float]] = field(default_factory=list)  # {"alpha", "beta", "atol_level", ...} in path order

    def summary(self) -> str:
        head = (
            f"auto end point (alpha={self.alpha:.4g}, beta={self.beta:.4g}): gradient error {self.atol_level:.3g} "
            f"{'<=' if self.met else '>'} tolerance {self.tolerance:.3g} ({self.backprop} backprop, "
            f"{len(self.measured)} point(s) measured)"
        )
        return head if self.met else head + "; no point met the tolerance, kept the far end of the path"


class CoefficientSchedule:
    """α from ``alpha0`` to ``alpha_end`` and β from ``beta0`` to ``beta_end`` (see the module docstring for the
    exact maths). ``every`` is η in ``unit``s; ``end_epoch`` is τ; ``iters_per_epoch`` is required for
    ``unit="iteration"``. ``end="auto"`` searches the path for the end point (call :meth:`calibrate`)."""

    def __init__(
        self,
        alpha0: float = 1.0,
        alpha_end: float = 0.3,
        beta0: float = 0.1,
        beta_end: float = 0.7,
        *,
        policy: str = "linear",
        order: str = "simultaneous",
        every: int = 1,
        unit: str = "epoch",
        end_epoch: float = 10,
        iters_per_epoch: int | None = None,
        curvature: float = 5.0,
        end: str = "fixed",
        tolerance: float = 1e-6,
    ):
        self.alpha0, self.alpha_end = float(alpha0), float(alpha_end)
        self.beta0, self.beta_end = float(beta0), float(beta_end)
        self.policy, self.order, self.unit, self.end = policy, order, unit, end
        self.every = every
        self.end_epoch = end_epoch
        self.iters_per_epoch = iters_per_epoch
        self.curvature = float(curvature)
        self.tolerance = float(tolerance)
        self.resolved_end: tuple[float, float] | None = None
        self.report: AutoEndReport | None = None
        self.last_applied: dict[str, float] | None = None
        self.last_bits_per_branch: float | None = None
        self._validate()

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "CoefficientSchedule":
        """A paper recipe (``"tad"``, ``"recognition"``, ``"point_cloud"``), with any argument overridden
        (``iters_per_epoch`` is needed by the iteration-based ones)."""
        if name not in PRESETS:
            raise ValueError(f"unknown schedule preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------------------------------------ validation
    def _validate(self) -> None:
        for field_name, value, allowed in (
            ("policy", self.policy, POLICIES),
            ("order", self.order, ORDERS),
            ("unit", self.unit, UNITS),
            ("end", self.end, END_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"CoefficientSchedule.{field_name} must be one of {allowed}, got {value!r}")
        for field_name in ("alpha0", "alpha_end", "beta0", "beta_end"):
            value = getattr(self, field_name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"CoefficientSchedule.{field_name} must lie in [0, 1], got {value}")
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ValueError(f"CoefficientSchedule.every (eta) must be a positive integer, got {self.every!r}")
        if not (isinstance(self.end_epoch, (int, float)) and self.end_epoch > 0):
            raise ValueError(f"CoefficientSchedule.end_epoch (tau) must be a positive number, got {self.end_epoch!r}")
        if self.unit == "iteration" and not (isinstance(self.iters_per_epoch, int) and self.iters_per_epoch >= 1):
            raise ValueError(
                "CoefficientSchedule.iters_per_epoch must be a positive integer when unit='iteration' "
                f"(tau is in epochs), got {self.iters_per_epoch!r}"
            )
        if self.policy != "linear" and not self.curvature > 0:
            raise ValueError(f"CoefficientSchedule.curvature must be > 0, got {self.curvature}")
        if not self.tolerance > 0:
            raise ValueError(f"CoefficientSchedule.tolerance must be > 0, got {self.tolerance}")

    # ---------------------------------------------------------------------------------------------------- values
    def progress(self, epoch: int, iteration: int = 0) -> float:
        """p ∈ [0, 1] at (epoch, iteration within the epoch), quantised to every η units."""
        if not (isinstance(epoch, int) and epoch >= 0):
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        if not (isinstance(iteration, int) and iteration >= 0):
            raise ValueError(f"iteration must be a non-negative integer, got {iteration!r}")
        if self.unit == "epoch":
            now, total = epoch, float(self.end_epoch)
        else:
            if iteration >= self.iters_per_epoch:
                raise ValueError(
                    f"iteration {iteration} is not an index within an epoch of {self.iters_per_epoch} iterations"
                )
            now, total = epoch * self.iters_per_epoch + iteration, float(self.end_epoch) * self.iters_per_epoch
        if now >= total:
            return 1.0
        return min(1.0, self.every * (now // self.every) / total)

    def shape(self, p: float) -> float:
        """The policy's interpolation weight w(p)."""
        if p <= 0.0:
            return 0.0
        if p >= 1.0:
            return 1.0
        k = self.curvature
        if self.policy == "linear":
            return p
        if self.policy == "exponential":
            return math.expm1(k * p) / math.expm1(k)
        return math.log1p(k * p) / math.log1p(k)

    def weights(self, p: float) -> tuple[float, float]:
        """(w_α, w_β) at progress p, following ``order``."""
        return _order_weights(self.order, p, self.shape)

    @property
    def end_point(self) -> tuple[float, float]:
        if self.end == "fixed":
            return self.alpha_end, self.beta_end
        if self.resolved_end is None:
            raise RuntimeError(
                "CoefficientSchedule(end='auto') has no end point yet: call schedule.calibrate(model, example_input) "
                "once before training (or load a checkpoint's schedule state)"
            )
        return self.resolved_end

    def value_at(self, epoch: int, iteration: int = 0) -> tuple[float, float]:
        """(α, β) at (epoch, iteration within the epoch), both 0-based."""
        return self._coefficients(self.weights(self.progress(epoch, iteration)), self.end_point)

    def _coefficients(self, w: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
        w_alpha, w_beta = w
        return (1.0 - w_alpha) * self.alpha0 + w_alpha * end[0], (1.0 - w_beta) * self.beta0 + w_beta * end[1]

    def apply(self, model: nn.Module, epoch: int, iteration: int = 0) -> tuple[float, float]:
        """Set every reversible stage of ``model`` to the value at (epoch, iteration); returns (α, β in use) —
        exact stages round β to a dyadic. The values are also kept in ``last_applied`` for logging, and the storage
        that β costs exact stages in ``last_bits_per_branch`` (bits per element per branch; None in other modes)."""
        alpha, beta = self.value_at(epoch, iteration)
        used = set_coefficients(model, alpha, beta)
        alpha_used, beta_used = used
        self.last_applied = {"alpha": alpha_used, "beta": beta_used, "epoch": epoch, "iteration": iteration}
        self.last_bits_per_branch = used.bits_per_branch
        return used

    def exact_bits_per_branch(self, beta_bits: int = 8) -> dict[str, float | None]:
        """The storage exact backprop pays at the schedule's start and end β: log2(1/β) bits per element per branch
        for the dyadic β = p/2^k (k ≤ ``beta_bits``) an exact stage would use (end None while 'auto' is uncalibrated)."""
        end = self.resolved_end if self.end == "auto" else (self.alpha_end, self.beta_end)

        def bits(beta: float | None) -> float | None:
            if beta is None or not beta > 0:
                return None
            return storage_bits_per_branch(nearest_dyadic(beta, beta_bits).value, beta_bits)

        return {"start": bits(self.beta0), "end": bits(end[1] if end else None)}

    # ----------------------------------------------------------------------------------------------- auto end
    def path_points(self, count: int) -> list[tuple[float, float]]:
        """``count`` evenly spaced points (α, β) along the geometric path from the start to (alpha_end, beta_end)
        traced by ``order`` (a straight line, or an L through the corner for the sequential orders)."""
        if count < 2:
            raise ValueError(f"path_points needs count >= 2, got {count}")
        far_end = (self.alpha_end, self.beta_end)
        return [
            self._coefficients(_order_weights(self.order, k / (count - 1), lambda p: p), far_end) for k in range(count)
        ]

    def calibrate(
        self,
        model: nn.Module,
        example_input: Tensor,
        *,
        backprop: str | None = None,
        points: int = 11,
        loss_fn=None,
        autocast_dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> AutoEndReport:
        """Choose the end point of an ``end="auto"`` schedule: walk :meth:`path_points` from the start and stop at
        the first point whose gradient error (``atol_level`` of memory-free vs vanilla backprop, on a copy of the
        converted ``model`` with ``example_input``) is ≤ ``tolerance``. ``backprop`` defaults to the model's
        memory-free mode. Under torch.distributed, rank 0's choice is broadcast so all ranks agree."""
        if self.end != "auto":
            raise ValueError("calibrate() chooses the end point of a schedule built with end='auto'")
        stages = reversible_stages(model)
        if not stages:
            raise ValueError(f"{type(model).__name__} has no reversible stages: convert it before calibrating")
        if backprop is None:
            memory_free = [s.backprop for s in stages if s.backprop != "vanilla"]
            backprop = memory_free[0] if memory_free else "reversible"
        probe = copy.deepcopy(model)
        probe_stages = reversible_stages(probe)
        measured: list[dict[str, float]] = []
        chosen: tuple[float, float, float] | None = None
        for alpha, beta in self.path_points(points):
            for stage in probe_stages:
                stage.set_backprop("vanilla")
                stage.set_coefficients(alpha, beta)
            result = compare_gradients(
                probe, example_input, backprop=backprop, loss_fn=loss_fn, seed=seed, autocast_dtype=autocast_dtype
            )
            measured.append(
                {"alpha": alpha, "beta": beta, "beta_used": result.beta, "atol_level": result.atol_level,
                 "max_rel_err": result.max_rel_err, "recon_rel_err": result.recon_rel_err,
                 "grad_scale": result.grad_scale}
            )
            if result.atol_level <= self.tolerance:
                chosen = (alpha, beta, result.atol_level)
                break
        del probe
        met = chosen is not None
        if chosen is None:
            last = measured[-1]
            chosen = (last["alpha"], last["beta"], last["atol_level"])
        report = AutoEndReport(chosen[0], chosen[1], chosen[2], self.tolerance, met, backprop, measured)
        report = _broadcast_from_rank0(report)
        self.resolved_end = (report.alpha, report.beta)
        self.report = report
        if not report.met:
            warnings.warn(report.summary(), RuntimeWarning, stacklevel=2)
        return report

    # ---------------------------------------------------------------------------------------------- checkpoints
    _CONFIG = ("alpha0", "alpha_end", "beta0", "beta_end", "policy", "order", "every", "unit", "end_epoch",
               "iters_per_epoch", "curvature", "end", "tolerance")

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": {name: getattr(self, name) for name in self._CONFIG},
            "resolved_end": None if self.resolved_end is None else list(self.resolved_end),
            "report": None if self.report is None else asdict(self.report),
            "last_applied": self.last_applied,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpointed schedule. The checkpoint's configuration wins (a warning lists what differed from
        this object's), so a resumed run follows the path it started on."""
        try:
            config = state["config"]
        except (KeyError, TypeError):
            raise ValueError("schedule state has no 'config' entry: not a CoefficientSchedule.state_dict()") from None
        unknown = set(config) - set(self._CONFIG)
        if unknown:
            raise ValueError(f"schedule state has unknown config field(s) {sorted(unknown)}")
        differing = {k: (getattr(self, k), v) for k, v in config.items() if getattr(self, k) != v}
        if differing:
            warnings.warn(
                "resuming the coefficient schedule from the checkpoint's configuration, which differs from the "
                "current one: " + ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differing.items()),
                stacklevel=2,
            )
        for name, value in config.items():
            setattr(self, name, value)
        self._validate()
        self.resolved_end = None if state.get("resolved_end") is None else tuple(state["resolved_end"])
        self.report = None if state.get("report") is None else AutoEndReport(**state["report"])
        self.last_applied = state.get("last_applied")

    def __repr__(self) -> str:
        end = self.resolved_end if self.end == "auto" else (self.alpha_end, self.beta_end)
        return (
            f"CoefficientSchedule(start=({self.alpha0}, {self.beta0}), end={end if end else 'auto (uncalibrated)'}, "
            f"policy={self.policy}, order={self.order}, every={self.every} {self.unit}(s), end_epoch={self.end_epoch})"
        )


def _order_weights(order: str, p: float, shape: Callable[[float], float]) -> tuple[float, float]:
    if order == "simultaneous":
        w = shape(p)
        return w, w
    first, second = shape(min(1.0, 2.0 * p)), shape(max(0.0, 2.0 * p - 1.0))
    return (first, second) if order == "alpha_first" else (second, first)


def _broadcast_from_rank0(report: AutoEndReport) -> AutoEndReport:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        holder = [report]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]
    return report
