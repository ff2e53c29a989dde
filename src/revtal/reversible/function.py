"""Memory-free backprop through a reversible stage.

:class:`ReversibleStageFunction` runs the whole stage under ``no_grad`` and saves only the final pair of streams
(x_n, y_n) — plus, with exact arithmetic, k-bit remainders. Its backward walks the blocks in reverse: it
reconstructs each block input from the streams above it, re-runs that block's branch with grad enabled (same RNG,
autocast and BatchNorm state as the forward, see :mod:`revtal.reversible.replay`), takes the vector-Jacobian
product, and drops everything of the block before moving down. Peak memory is one block's activations, whatever
the depth.

Parameters are passed to the Function as inputs and their gradients returned from ``backward``: gradients reach
``.grad`` through ordinary autograd accumulation, so DDP's hooks, gradient accumulation and hooks on parameters all
behave as with any other layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from revtal.reversible.coupling import Coupling, StreamArithmetic, relative_error
from revtal.reversible.replay import AutocastState, RngState, batchnorm_modules, frozen_running_stats


class NonFiniteGradientError(FloatingPointError):
    """A reversible stage produced a NaN/inf gradient (usually an unstable reconstruction at small β)."""


@dataclass(frozen=True)
class Branch:
    """One residual branch F_i: ``fn`` computes F_i(x) only (not the skip), using parameters of ``owner``.

    With ``includes_skip=True``, ``fn(x, alpha)`` returns G_i(x) = F_i(x) + α·x itself: for blocks whose
    non-linearity follows the residual sum (ResNet: relu(b(x) + x)), G_α(x) = relu(b(x) + α·x) is the pretrained
    block at α=1 and Re²TAL's relu(b(x)) at α=0.
    """

    owner: nn.Module
    fn: Callable[..., Tensor]
    includes_skip: bool = False

    def g(self, x: Tensor, c: "Coupling") -> Tensor:
        return self.fn(x, c.alpha) if self.includes_skip else c.g(self.fn(x), x)


def run_plain(
    x0: Tensor, branches: list[Branch], c: Coupling, checkpoint_blocks: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The stage with ordinary autograd (or none): the reference ``vanilla`` mode, and every no-grad forward.

    y is carried as ``None`` while it is identically zero (β = 0), so α=1, β=0 computes x + F(x) exactly as the
    original residual network does. With ``checkpoint_blocks`` each block (the consecutive branches sharing an
    owner) runs under non-reentrant ``torch.utils.checkpoint``: the conventional memory-saving baseline, which
    stores one block input per block instead of nothing.
    """
    x = x0
    y = x0 if c.input == "duplicate" else (None if c.beta == 0.0 else c.beta * x0)
    if not checkpoint_blocks:
        return _run_branches(x, y, branches, c)
    for group in _group_by_owner(branches):
        x, y = torch.utils.checkpoint.checkpoint(_run_branches, x, y, group, c, use_reentrant=False)
    return x, y


def _run_branches(x: Tensor, y: Tensor | None, branches: list[Branch], c: Coupling) -> tuple[Tensor, Tensor | None]:
    for branch in branches:
        g = branch.g(x, c)
        x, y = (g if y is None else g + y), (None if c.beta == 0.0 else c.beta * x)
    return x, y


def _group_by_owner(branches: list[Branch]) -> list[list[Branch]]:
    groups: list[list[Branch]] = []
    for branch in branches:
        if groups and groups[-1][-1].owner is branch.owner:
            groups[-1].append(branch)
        else:
            groups.append([branch])
    return groups


@dataclass
class ReconstructionCheck:
    """The last verified reconstruction of a stage input (see ``ReversibleStage.verify_next_backward``)."""

    relative_error: float
    max_abs_error: float
    bitwise: bool


@dataclass
class StageRun:
    """Everything one forward call of a stage hands to its backward (non-tensor state)."""

    branches: list[Branch]
    coupling: Coupling
    arithmetic: StreamArithmetic
    params: list[Tensor]
    param_slots: list[list[int]]  # per branch: indices into ``params`` of its owner's trainable parameters
    preserve_rng: bool
    verify: bool = False
    on_verified: Callable[[ReconstructionCheck], None] | None = None
    rng_states: list[RngState] = field(default_factory=list)
    autocast: AutocastState | None = None
    norms: dict[int, list] = field(default_factory=dict)
    name: str = ""
    check_finite: bool = True

    def branch_output(self, i: int, v: Tensor) -> Tensor:
        return self.branches[i].g(v, self.coupling)


class ReversibleStageFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: StageRun, x0: Tensor, *params: Tensor):
        arith, c = run.arithmetic, run.coupling
        run.autocast = AutocastState.capture(x0.device.type)
        with torch.no_grad():
            arith.start_forward()
            x, y = arith.begin(x0, c)
            first = x.clone() if run.verify else None
            residues: list[Tensor | None] = []
            for i in range(len(run.branches)):
                if run.preserve_rng:
                    run.rng_states.append(RngState.capture(x0.device))
                g = run.branch_output(i, arith.view(x, x0))
                x, y, residue = arith.advance(x, y, g, c)
                residues.append(residue)
            arith.finish_forward()
            out_x, out_y = arith.view(x, x0), arith.view(y, x0)
        stored = [r for r in residues if r is not None]
        ctx.residue_present = [r is not None for r in residues]
        ctx.run = run
        ctx.like = (x0.dtype, x0.device)
        streams = (out_x, out_y) if not arith.exact else (x, y)
        ctx.save_for_backward(*streams, *stored, *([first] if first is not None else []))
        return out_x, out_y

    @staticmethod
    def backward(ctx, grad_x: Tensor | None, grad_y: Tensor | None):
        run: StageRun = ctx.run
        arith, c = run.arithmetic, run.coupling
        saved = list(ctx.saved_tensors)
        x, y = saved[0], saved[1]
        n_stored = sum(ctx.residue_present)
        stored = iter(saved[2:2 + n_stored])
        residues = [next(stored) if present else None for present in ctx.residue_present]
        first = saved[2 + n_stored] if run.verify else None
        del saved
        dtype, device = ctx.like
        like = torch.empty((), dtype=dtype, device=device)
        shape_src = arith.view(x, like)
        grad_x = torch.zeros_like(shape_src) if grad_x is None else grad_x
        grad_y = torch.zeros_like(shape_src) if grad_y is None else grad_y
        del shape_src
        param_grads: list[Tensor | None] = [None] * len(run.params)

        for i in reversed(range(len(run.branches))):
            x_prev = arith.recover_input(x, y, residues[i], c)
            residues[i] = None
            v = arith.view(x_prev, like).detach().requires_grad_(True)
            rng = run.rng_states[i].restored() if run.preserve_rng else contextlib.nullcontext()
            owner = run.branches[i].owner
            norms = run.norms.setdefault(i, batchnorm_modules(owner))
            slots = run.param_slots[i]
            inputs = [v] + [run.params[j] for j in slots]
            # running stats are put back only after autograd.grad: BatchNorm's backward checks they are unmodified
            with frozen_running_stats(norms):
                with torch.enable_grad(), rng, run.autocast.scope():
                    g = run.branch_output(i, v)
                grads = torch.autograd.grad(g, inputs, grad_x, allow_unused=True)
            y_prev = arith.recover_y(x, g.detach())
            del g
            grad_v = grads[0] if grads[0] is not None else torch.zeros_like(v)
            for j, gp in zip(slots, grads[1:]):
                if gp is not None:
                    param_grads[j] = gp if param_grads[j] is None else param_grads[j] + gp
            grad_x, grad_y = grad_v + c.beta * grad_y, grad_x
            x, y = x_prev, y_prev
            del v, grads, grad_v

        if run.verify and first is not None:
            run_check = _compare(x, first, arith, like)
            if run.on_verified is not None:
                run.on_verified(run_check)
        grad_input = c.input_gradient(grad_x, grad_y)
        if run.check_finite and not bool(torch.isfinite(grad_input).all()):
            raise NonFiniteGradientError(
                f"non-finite gradient in reversible stage {run.name!r} (alpha={c.alpha}, beta={c.beta}, "
                f"arithmetic={getattr(arith, 'name', type(arith).__name__)}); float reconstruction is unstable at "
                "small beta: use backprop='exact' or a larger beta"
            )
        if not ctx.needs_input_grad[1]:
            grad_input = None
        ctx.run = None
        return (None, grad_input, *param_grads)


def _compare(reconstructed: Any, truth: Any, arith: StreamArithmetic, like: Tensor) -> ReconstructionCheck:
    a, b = arith.view(reconstructed, like), arith.view(truth, like)
    return ReconstructionCheck(
        relative_error=relative_error(a, b),
        max_abs_error=float((a.double() - b.double()).abs().max()) if a.numel() else 0.0,
        bitwise=bool(torch.equal(reconstructed, truth)),
    )
