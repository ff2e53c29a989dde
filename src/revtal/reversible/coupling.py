"""Coupling maths of a reversible stage (Dr²Net, with Re²TAL as a special case).

A stage has residual branches F_1..F_n and two streams, x (the original residual stream) and y (the new
reversible residual). With coefficients α (original residual) and β (reversible residual)::

    y_0 = β·x_0                                  (or y_0 = x_0 with ``input="duplicate"``, Re²TAL's convention)
    for i = 1..n:
        y_i = β·x_{i-1}
        x_i = G_i(x_{i-1}) + y_{i-1},   G_i(x) = F_i(x) + α·x
    output = x_n                                  (or (x_n + y_n) / 2 with ``output="mean"``, Re²TAL's convention)

Each step is invertible whenever β ≠ 0::

    x_{i-1} = y_i / β
    y_{i-1} = x_i − G_i(x_{i-1})

so the backward pass needs only (x_n, y_n): it walks the stage in reverse, recomputing each block input.

Special points:
* α=1, β=0: y ≡ 0 and x_i = F_i(x_{i-1}) + x_{i-1} — exactly the pretrained residual network (not invertible).
* α=0, β=1: x_i = F_i(x_{i-1}) + x_{i-2} — Re²TAL's rewiring, each residual skipping one more block.

Gradients (the adjoint of one step, shared by every arithmetic)::

    ∂L/∂y_{i-1} = ∂L/∂x_i
    ∂L/∂x_{i-1} = (∂G_i/∂x)ᵀ ∂L/∂x_i + β·∂L/∂y_i

This module holds the coefficients and the plain floating-point arithmetic. The arithmetic is a pluggable piece
(:class:`StreamArithmetic`): :mod:`revtal.reversible.exact` supplies a fixed-point one whose inverse is bitwise
exact at every (α, β).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from revtal.reversible.simulation import simulating

INPUT_MODES = ("scaled", "duplicate")
OUTPUT_MODES = ("last", "mean")


@dataclass
class Coupling:
    """The coefficients and stream conventions of one reversible stage.

    ``alpha`` and ``beta`` are plain floats rather than buffers: they are set by a schedule (never learned), must
    not add keys to the model's state_dict (so original checkpoints load with ``strict=True``), and reading them
    must not synchronise with an accelerator. Checkpoints store them through the schedule.
    """

    alpha: float = 1.0
    beta: float = 0.0
    input: str = "scaled"
    output: str = "last"

    def __post_init__(self):
        self.alpha = float(self.alpha)
        self.beta = float(self.beta)
        if self.input not in INPUT_MODES:
            raise ValueError(f"Coupling.input must be one of {INPUT_MODES}, got {self.input!r}")
        if self.output not in OUTPUT_MODES:
            raise ValueError(f"Coupling.output must be one of {OUTPUT_MODES}, got {self.output!r}")

    def g(self, f_out: Tensor, x: Tensor) -> Tensor:
        """G(x) = F(x) + α·x, written so that α=1 and α=0 involve no multiplication. At α=1 it is ``x + F(x)``, in
        the residual networks' operand order: the sum's memory layout follows its first operand, and a later
        reduction (an average pool) sums in layout order, so the order matters for bitwise equality."""
        if self.alpha == 1.0:
            return x + f_out
        if self.alpha == 0.0:
            return f_out
        return f_out + self.alpha * x

    def input_gradient(self, grad_x0: Tensor, grad_y0: Tensor, overwrite: bool = False) -> Tensor:
        """∂L/∂(stage input) from the gradients of both initial streams; with ``overwrite``, written over
        ``grad_x0`` (which the caller owns)."""
        weight = 1.0 if self.input == "duplicate" else self.beta
        if grad_y0 is None:  # y_0 reached nothing that was differentiated (a one-branch stage's unused y_n)
            return grad_x0
        if not overwrite:
            return grad_x0 + weight * grad_y0
        return grad_x0.add_(grad_y0 if weight == 1.0 else weight * grad_y0)

    def combine_output(self, x: Tensor, y: Tensor) -> Tensor:
        # halved in place: the sum is a temporary, and a second stream-sized one at a stage's end is a forward peak
        return x if self.output == "last" else (x + y).mul_(0.5)


class StreamArithmetic(Protocol):
    """How the two streams are represented and stepped. Streams may live in any representation (floats, integers);
    ``view`` turns one into the floating-point tensor the residual branches consume. ``tape`` is the arithmetic's
    own per-call state (None for floats): what one forward call keeps for its backward besides saved tensors."""

    exact: bool

    def begin(self, x0: Tensor, c: Coupling) -> tuple[Any, Any, Any]:
        """x_0 → (x_0, y_0, tape) at the start of a memory-free forward."""
        ...

    def view(self, x: Any, like: Tensor, tape: Any) -> Tensor: ...

    def advance(self, x: Any, y: Any, g: Tensor, c: Coupling, tape: Any) -> tuple[Any, Any]:
        """(x_{i-1}, y_{i-1}, G_i(x_{i-1})) → (x_i, y_i)."""
        ...

    def finish(self, x: Any, y: Any, tape: Any) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(x_n, y_n) → (the two float outputs, the tensors the backward needs). The place for checks that need one
        host synchronisation per stage forward."""
        ...

    def resume(self, saved: list[Tensor], tape: Any) -> tuple[Any, Any]:
        """The saved tensors of :meth:`finish` → (x_n, y_n) at the start of the backward walk."""
        ...

    def recover_input(self, x: Any, y: Any, residue: Any, c: Coupling) -> Any:
        """(x_i, y_i, tape) → x_{i-1}."""
        ...

    def recover_y(self, x: Any, g: Tensor, tape: Any, overwrite: bool = False) -> Any:
        """(x_i, G_i(x_{i-1})) → y_{i-1}; with ``overwrite``, written over x_i (which the caller owns)."""
        ...

    def check(self, c: Coupling) -> None: ...


class FloatArithmetic:
    """Streams in the compute dtype. The inverse divides by β and subtracts a recomputed G, so reconstruction
    error is amplified by roughly (α + ‖∂F‖)/β per step: fine near (0, 1), useless near (1, 0.1)."""

    exact = False
    name = "float"

    def begin(self, x0: Tensor, c: Coupling) -> tuple[Tensor, Tensor, None]:
        y0 = x0 if c.input == "duplicate" else c.beta * x0
        return x0, y0, None

    def view(self, x: Tensor, like: Tensor, tape: None) -> Tensor:
        return x

    def advance(self, x: Tensor, y: Tensor, g: Tensor, c: Coupling, tape: None) -> tuple[Tensor, Tensor]:
        # y_i = x_{i-1} itself at β = 1 (Re²TAL): no stream is ever written in place in the forward
        return g + y, (x if c.beta == 1.0 else c.beta * x)

    def finish(self, x: Tensor, y: Tensor, tape: None) -> tuple[Tensor, Tensor, list[Tensor]]:
        return x, y, [x, y]

    def resume(self, saved: list[Tensor], tape: None) -> tuple[Tensor, Tensor]:
        return saved[0], saved[1]

    def recover_input(self, x: Tensor, y: Tensor, residue: None, c: Coupling) -> Tensor:
        return y if c.beta == 1.0 else y / c.beta

    def recover_y(self, x: Tensor, g: Tensor, tape: None, overwrite: bool = False) -> Tensor:
        return x.sub_(g) if overwrite else x - g

    def check(self, c: Coupling) -> None:
        if not c.beta > 0:
            raise ValueError(
                f"reversible backprop needs beta > 0 (the inverse divides by beta), got beta={c.beta}; "
                "use backprop='vanilla' for beta=0 (the original network)"
            )


def relative_error(estimate: Tensor, truth: Tensor) -> float:
    """‖estimate − truth‖ / ‖truth‖ in float64 (inf if the estimate is not finite)."""
    return error_summary(estimate, truth)[0]


# elements per float64 piece of an error check (32 MiB): checking a reconstruction must not hold float64 copies of
# the activation itself (SlowFast-101 at 512×224²: three copies of a stage stream, 2.3 GiB, were a step's peak)
_ERROR_CHUNK = 1 << 22


def all_finite(tensor: Tensor) -> Tensor:
    """Whether every element is finite, as a 0-d bool tensor (no host synchronisation), checked one piece at a time:
    ``isfinite`` of a whole stream-sized gradient made a float and three bool tensors of its size (SlowFast,
    Video Swin at 512×224²: the end of a stage's backward was the step's peak)."""
    flat = tensor.detach().reshape(-1)
    finite = torch.ones((), dtype=torch.bool, device=tensor.device)
    for start in range(0, flat.numel(), _ERROR_CHUNK):
        finite = finite & torch.isfinite(flat[start:start + _ERROR_CHUNK]).all()
    return finite


def error_summary(estimate: Tensor, truth: Tensor) -> tuple[float, float]:
    """(‖estimate − truth‖ / ‖truth‖, max |estimate − truth|), accumulated in float64 one piece at a time; the
    relative error is inf if the estimate is not finite; both are nan for tensors without values (revtal plan: the
    same work, nothing to read)."""
    estimate, truth = estimate.detach().reshape(-1), truth.detach().reshape(-1)
    zero = torch.zeros((), dtype=torch.float64, device=estimate.device)
    finite, diff_sq, truth_sq, gap = torch.ones((), dtype=torch.bool, device=estimate.device), zero, zero, zero
    for start in range(0, estimate.numel(), _ERROR_CHUNK):
        e = estimate[start:start + _ERROR_CHUNK].double()
        t = truth[start:start + _ERROR_CHUNK].double()
        finite = finite & torch.isfinite(e).all()
        d = e - t
        diff_sq, truth_sq = diff_sq + d.square().sum(), truth_sq + t.square().sum()
        gap = torch.maximum(gap, d.abs().max())
        del e, t, d
    if simulating(finite):
        return math.nan, math.nan
    max_abs = float(gap)
    if not finite:
        return float("inf"), max_abs
    denom, diff = math.sqrt(float(truth_sq)), math.sqrt(float(diff_sq))
    return (diff / denom if denom > 0 else diff), max_abs
