"""Memory-free backprop through a reversible stage.

:func:`run_memory_free` runs the stage under ``no_grad``, one :class:`ReversibleBranchFunction` node per residual
branch, and saves only the final pair of streams (x_n, y_n) — with exact arithmetic, the float x_n and the information buffer
of :mod:`revtal.reversible.exact`. With float streams and Re²TAL's output (x_n + y_n)/2 it saves that output and y_n
instead (x_n = 2·output − y_n, to round-off): the layer after the stage usually saves its input, which is then the
tensor already kept, not a third one.
Backward walks the branches in reverse: each node reconstructs its branch's input from the streams above it,
re-runs the branch with grad enabled (same RNG, autocast and BatchNorm state as the forward, see
:mod:`revtal.reversible.replay`), takes the vector-Jacobian product, and drops everything of the branch before the
node below runs. Peak memory is one branch's activations and one branch's parameter gradients, whatever the depth.

The parameters of a branch's owner are inputs of its node and their gradients are returned from its ``backward``:
gradients reach ``.grad`` through ordinary autograd accumulation, so DDP's hooks, gradient accumulation,
``torch.autograd.grad`` and hooks on parameters all behave as with any other layer.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from revtal.reversible.coupling import Coupling, StreamArithmetic, all_finite, error_summary
from revtal.reversible.pieces import Piece, backward_by_pieces, g_by_pieces
from revtal.reversible.replay import (
    AutocastState,
    FunctionModes,
    RngState,
    batchnorm_modules,
    replaying_function_modes,
    statistics_unchanged,
)
from revtal.reversible.simulation import autocast_device_type, simulating


class NonFiniteGradientError(FloatingPointError):
    """A reversible stage produced a NaN/inf gradient (usually an unstable reconstruction at small β)."""


class UnsupportedBackwardError(RuntimeError):
    """A second backward through one forward, or a differentiable backward (``create_graph``): memory-free stages
    reconstruct their activations by consuming what the forward stored, so each forward backs one backward."""


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
    # F acts on groups of tokens alone (revtal.reversible.pieces): ``pieces(x)`` lists them, or returns None where
    # this call cannot be split (a dropout mask drawn over the whole input)
    pieces: Callable[[Tensor], Sequence[Piece] | None] | None = None

    def g(self, x: Tensor, c: "Coupling") -> Tensor:
        if self.includes_skip:
            return self.fn(x, c.alpha)
        pieces = self.pieces_of(x) if not torch.is_grad_enabled() else None
        if pieces is not None:
            return g_by_pieces(pieces, x, c.g)
        return c.g(self.fn(x), x)

    def pieces_of(self, x: Tensor) -> Sequence[Piece] | None:
        return None if self.pieces is None or self.includes_skip else self.pieces(x)


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
        x, y = torch.utils.checkpoint.checkpoint(_run_branches, x, y, group, c, use_reentrant=False,
                                                 context_fn=replaying_function_modes)
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
    simulated: bool = False  # run on tensors without values (revtal.reversible.simulation): nothing was compared


@dataclass
class StageRun:
    """Everything one forward call of a stage hands to its backward (non-tensor state)."""

    branches: list[Branch]
    coupling: Coupling
    arithmetic: StreamArithmetic
    params: list[list[Tensor]]  # per branch: its owner's trainable parameters
    preserve_rng: bool
    verify: bool = False
    verify_whole: bool = False  # float streams: keep the whole input for the check, not a sample
    on_verified: Callable[[ReconstructionCheck], None] | None = None
    rng_states: list[RngState] = field(default_factory=list)
    autocast: AutocastState | None = None
    function_modes: FunctionModes = field(default_factory=FunctionModes)
    norms: dict[int, list] = field(default_factory=dict)
    name: str = ""
    check_finite: bool = True
    streams: tuple[Any, Any] | None = None  # the streams between two nodes (forward: above; backward: below)
    tape: Any = None  # the arithmetic's own state of this call (exact: row scales, information buffer)
    verified_input: Tensor | None = None
    outputs: list = field(default_factory=list)  # weak references to the tensors the top node's backward began from
    # the top node returns (and saves) the stage output (x_n + y_n)/2 in place of x_n (float streams only)
    combined_output: bool = False
    made_gradients: list = field(default_factory=list)  # weak references to the stream gradients nodes returned

    def branch_output(self, i: int, v: Tensor) -> Tensor:
        return self.branches[i].g(v, self.coupling)


class ReversibleBranchFunction(torch.autograd.Function):
    """One branch of a memory-free stage as one autograd node.

    The nodes of a stage are chained through their stream outputs, so autograd runs their backwards top-down and
    takes each branch's parameter gradients as soon as that branch is done: backward holds one branch's parameter
    gradients beside the accumulated ``.grad``, not the whole stage's (for a stage run on many clips of a video
    that doubled the gradients in memory). The streams themselves do not pass through autograd's saved tensors:
    the top node saves (x_n, y_n) and every node hands the streams it reconstructs to the node below through
    ``run.streams``. A node's outputs are its streams as floats (the arithmetic's ``view``): links for the
    gradients, which nothing holds once the next node has run.
    """

    @staticmethod
    def forward(ctx, run: StageRun, i: int, x_in: Tensor, y_in: Tensor | None, *params: Tensor):
        arith, c = run.arithmetic, run.coupling
        last = i == len(run.branches) - 1
        with torch.no_grad():
            if i == 0:
                run.autocast = AutocastState.capture(autocast_device_type(x_in.device))
                run.function_modes = FunctionModes.capture()
                x, y, run.tape = arith.begin(x_in, c)
                run.verified_input = None
                if run.verify:  # float streams: a fixed sample (see _CHECK_STRIDE); exact streams: all of it
                    run.verified_input = x.clone() if arith.exact or run.verify_whole else _check_sample(x).clone()
                branch_input = arith.view(x, x_in, run.tape)
            else:
                x, y = run.streams
                branch_input = x_in  # the previous node's x output is the float view of x
            if run.preserve_rng:
                run.rng_states.append(RngState.capture(x_in.device))
            x, y = arith.advance(x, y, run.branch_output(i, branch_input), c, run.tape)
            if last:
                out_x, out_y, stored = arith.finish(x, y, run.tape)
                if run.combined_output:
                    out_x = c.combine_output(out_x, out_y)
                    stored = [out_x, out_y]
            else:
                out_x, stored = arith.view(x, x_in, run.tape), []
                # the y output of an inner node is only a link for its gradient: nothing reads its values
                out_y = y if not arith.exact else torch.empty_like(out_x)
        run.streams = None if last else (x, y)
        # an unused output (the top node's y_n, or x_n beside a combined output) gets the gradient None, not a
        # stream-sized tensor of zeros that autograd would make and hold through this node's backward
        ctx.set_materialize_grads(False)
        ctx.run, ctx.i, ctx.like = run, i, (x_in.dtype, x_in.device)
        extra = [run.verified_input] if last and run.verified_input is not None else []
        ctx.n_stored = len(stored)
        ctx.save_for_backward(*stored, *extra)
        return out_x, out_y

    @staticmethod
    def backward(ctx, grad_x: Tensor | None, grad_y: Tensor | None):
        run: StageRun | None = ctx.run
        if run is None or torch.is_grad_enabled():
            raise UnsupportedBackwardError(_unsupported_backward_message(
                "a second backward through the same forward (retain_graph=True)" if run is None
                else "a differentiable backward (create_graph=True, e.g. double backward or gradient penalties)"))
        i = ctx.i
        arith, c, tape = run.arithmetic, run.coupling, run.tape
        saved = list(ctx.saved_tensors)
        if ctx.n_stored:  # the top node: the streams begin from what the forward stored
            run.streams = arith.resume(saved[:ctx.n_stored], tape)
            # the stored tensors layers above may hold; a stage with a combined output returns only that output, so
            # its y_n is the stage's own
            visible = saved[:1] if run.combined_output else saved[:ctx.n_stored]
            run.outputs = [weakref.ref(t) for t in visible]
            if run.combined_output:  # saved (output, y_n), output = (x_n + y_n)/2; its gradient reaches both streams
                output, y_n = run.streams
                run.streams = (2.0 * output - y_n, y_n)
                del output, y_n
                if grad_x is not None:
                    grad_x = 0.5 * grad_x
                    run.made_gradients = [weakref.ref(grad_x)]  # the node below's ∂L/∂y: a tensor of this stage's
                    grad_y = grad_x if grad_y is None else grad_x + grad_y
            if run.verify:
                run.verified_input = saved[ctx.n_stored]
        del saved
        x, y = run.streams
        run.streams = None
        dtype, device = ctx.like
        like = torch.empty((), dtype=dtype, device=device)
        if grad_x is None:  # grad_y None stays None: a zero gradient adds nothing below
            grad_x = torch.zeros_like(arith.view(x, like, tape))

        # a stream may be one of the stage's output tensors (float x_n, y_n; for β = 1, x_{n-1} is y_n), which
        # layers above can still hold: those are never overwritten (weak references: they keep nothing alive)
        owns_x = not any(ref() is x for ref in run.outputs)
        x_prev = arith.recover_input(x, y, tape, c)
        del y  # all that backward still needs of y_i is in x_{i-1} (for β = 1 the same tensor)
        v = arith.view(x_prev, like, tape).detach()
        rng = run.rng_states[i].restored() if run.preserve_rng else contextlib.nullcontext()
        norms = run.norms.setdefault(i, batchnorm_modules(run.branches[i].owner))

        def recompute():  # the forward's autocast and function modes; BatchNorm statistics left as they were
            return _scopes(torch.enable_grad(), run.autocast.scope(), run.function_modes.scope(),
                           statistics_unchanged(norms))

        pieces = None if arith.exact else run.branches[i].pieces_of(v)
        if pieces is not None:
            # ∂L/∂x_{i-1} accumulates in ∂L/∂y_i's tensor where this stage made it: no new stream
            if grad_y is None:
                grad_v = torch.zeros_like(v)
            elif grad_y is not grad_x and any(ref() is grad_y for ref in run.made_gradients):
                grad_v = grad_y if c.beta == 1.0 else grad_y.mul_(c.beta)
            else:
                grad_v = grad_y.clone() if c.beta == 1.0 else c.beta * grad_y
            y_prev = x if owns_x else torch.empty_like(x)
            with rng:
                param_grads = backward_by_pieces(pieces, v, x, y_prev, grad_x, grad_v, c.g, run.params[i],
                                                 recompute)
            del x, v
            fresh_grad_v = True
        else:
            v.requires_grad_(True)
            with rng, recompute():
                g = run.branch_output(i, v)
            # y_{i-1} = x_i − G_i(x_{i-1}) before the vector-Jacobian product allocates its gradients, written over
            # x_i where this node owns it: the branch's backward then runs beside one stream fewer
            y_prev = arith.recover_y(x, g.detach(), tape, overwrite=owns_x)
            del x
            grad_v, *param_grads = torch.autograd.grad(g, [v, *run.params[i]], grad_x, allow_unused=True)
            del g
            if grad_v is None:
                grad_v = torch.zeros_like(v)
            del v
            # autograd may hand back a tensor it was given, or a view of one (a branch that passes its gradient
            # through): the sum goes in place only into a tensor of its own
            fresh_grad_v = _own_tensor(grad_v, grad_x)
            if grad_y is not None:
                term = grad_y if c.beta == 1.0 else c.beta * grad_y
                grad_v = grad_v.add_(term) if fresh_grad_v and _own_tensor(grad_v, grad_y) else grad_v + term
                fresh_grad_v = True
        # the stream gradient a node returns reaches the node below as ∂L/∂x and the one below that as ∂L/∂y
        run.made_gradients = [*run.made_gradients[-1:], weakref.ref(grad_v)]
        grad_x, grad_y, fresh_grad_x = grad_v, grad_x, fresh_grad_v
        del grad_v
        ctx.run = None

        if i > 0:
            run.streams = (x_prev, y_prev)
            return (None, None, grad_x, grad_y, *param_grads)
        if run.verify and run.verified_input is not None:
            run_check = _compare(x_prev, run.verified_input, arith, like, tape, sampled=not run.verify_whole)
            run.verified_input = None
            if run.on_verified is not None:
                run.on_verified(run_check)
        run.tape = None
        # ∂L/∂x_0 is a new tensor where the gradients came from this node's own sum; written over it (no new stream)
        grad_input = c.input_gradient(grad_x, grad_y, overwrite=fresh_grad_x)
        finite = all_finite(grad_input) if run.check_finite else None
        if finite is not None and not simulating(finite) and not bool(finite):
            raise NonFiniteGradientError(
                f"non-finite gradient in reversible stage {run.name!r} (alpha={c.alpha}, beta={c.beta}, "
                f"arithmetic={getattr(arith, 'name', type(arith).__name__)}); float reconstruction is unstable at "
                "small beta: use backprop='exact' or a larger beta"
            )
        if not ctx.needs_input_grad[2]:
            grad_input = None
        return (None, None, grad_input, None, *param_grads)


def _own_tensor(grad: Tensor, other: Tensor) -> bool:
    """Whether ``grad`` is a dense tensor with a storage of its own (not ``other``'s, not an expanded view)."""
    return grad.is_contiguous() and not torch._C._is_alias_of(grad, other)


@contextlib.contextmanager
def _scopes(*managers):
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


def _unsupported_backward_message(what: str) -> str:
    return (
        f"memory-free reversible backprop does not support {what}: the stage reconstructs its activations from its "
        "output and consumes them as it goes. Run the forward again for each backward, or convert with "
        "backprop='checkpoint' or 'vanilla' (revtal.set_backprop(model, 'vanilla')) where the model must support it"
    )


def run_memory_free(run: StageRun, x0: Tensor) -> tuple[Tensor, Tensor]:
    """The stage's forward as a chain of :class:`ReversibleBranchFunction` nodes; returns the streams (x_n, y_n)."""
    x, y = x0, None
    for i in range(len(run.branches)):
        x, y = ReversibleBranchFunction.apply(run, i, x, y, *run.params[i])
    return x, y


# A float stream's reconstruction check compares every 16th element of the stage input: the monitor's relative error
# is an estimate from 1/16 of the elements, and the check costs 1/16 of a stream instead of a whole copy beside the
# stage's own streams (at 512×224² a Video Swin-T stage-1 input is 294 MiB). Exact streams keep the whole input:
# their check is a bitwise comparison, and their representation is per-row scaled.
_CHECK_STRIDE = 16


def _check_sample(x: Tensor) -> Tensor:
    return x.reshape(-1)[::_CHECK_STRIDE]


def _compare(reconstructed: Any, truth: Any, arith: StreamArithmetic, like: Tensor, tape: Any,
             sampled: bool) -> ReconstructionCheck:
    if sampled and not arith.exact:
        reconstructed = _check_sample(reconstructed)
    a, b = arith.view(reconstructed, like, tape), arith.view(truth, like, tape)
    error, gap = error_summary(a, b)
    if simulating(a):  # the same tensors, no values to read
        return ReconstructionCheck(math.nan, math.nan, bitwise=False, simulated=True)
    return ReconstructionCheck(
        relative_error=error,
        max_abs_error=gap,
        bitwise=bool(torch.equal(reconstructed, truth)),
    )
