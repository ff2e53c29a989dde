"""How far memory-free backprop is from ordinary backprop: the measurements behind ``revtal errmap``, the
schedule's automatic end point and the tests.

A memory-free stage does not store its activations; backward reconstructs them from the stage output. With float
arithmetic the reconstruction loses accuracy as β shrinks, and the gradients inherit the error. The reference is
``vanilla`` backprop through the *same* coupled architecture (same α, β), which stores everything: any difference
between the two is numerical error of the reconstruction, nothing else.

Three numbers describe one comparison (all computed in float64):

* ``atol_level`` — Dr²Net's metric: the smallest ``atol`` for which
  ``torch.allclose(G_mem, G_vanilla, rtol=1e-5, atol=atol)`` holds for every parameter gradient, i.e.
  ``max(|a − b| − rtol·|b|)`` over all elements, clipped at 0;
* ``max_rel_err`` — the largest per-tensor relative error ``‖a − b‖ / ‖b‖`` over the parameter gradients (a
  per-element ratio would divide by exact zeros);
* ``recon_rel_err`` — the largest relative error ``‖x̂_0 − x_0‖ / ‖x_0‖`` of a reconstructed stage input over the
  stages (``ReversibleStage.verify_next_backward``).

A float reconstruction that blows up (small β) makes the core raise :class:`NonFiniteGradientError`; that
comparison is recorded as ``inf`` rather than aborting a sweep.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

import torch
from torch import Tensor, nn

from revtal.reversible.function import NonFiniteGradientError, ReconstructionCheck
from revtal.reversible.stage import ReversibleStage, reversible_stages

ALLCLOSE_RTOL = 1e-5

LossFn = Callable[[object], Tensor]


class GradientErrors(NamedTuple):
    atol_level: float
    max_rel_err: float
    reference_max_abs: float  # the largest |reference gradient| element: the scale atol_level is measured against


def gradient_errors(
    estimate: Iterable[Tensor], reference: Iterable[Tensor], rtol: float = ALLCLOSE_RTOL
) -> GradientErrors:
    """Errors of ``estimate`` against ``reference`` (lists of gradients), in one pass over the tensors.

    atol level: the smallest atol with ``torch.allclose(a, b, rtol=rtol, atol=atol)`` true for every pair — allclose
    tests ``|a − b| ≤ atol + rtol·|b|`` element-wise, so it is the largest ``|a − b| − rtol·|b|``, never below 0.
    Max relative error: the largest ``‖a − b‖ / ‖b‖`` (``‖a − b‖`` where ``‖b‖ = 0``). Non-finite estimates give
    ``inf`` for both. Differences are taken in the gradients' own dtype (exact for nearby floats, by Sterbenz's
    lemma); norms accumulate in float64.
    """
    level, worst, scale = 0.0, 0.0, 0.0
    for a, b in zip(estimate, reference, strict=True):
        if not a.numel():
            continue
        a, b = a.detach(), b.detach()
        gap = (a - b).abs_()
        diff = float(torch.linalg.vector_norm(gap, dtype=torch.float64))
        norm = float(torch.linalg.vector_norm(b, dtype=torch.float64))
        magnitude = b.abs()
        scale = max(scale, float(magnitude.max()))
        # max() propagates NaN and |inf − b| = inf, so one scalar tells whether the estimate was finite
        tensor_level = float(gap.sub_(magnitude, alpha=rtol).max())
        if not (math.isfinite(tensor_level) and math.isfinite(diff)):
            return GradientErrors(math.inf, math.inf, scale)
        level = max(level, tensor_level)
        worst = max(worst, diff / norm if norm > 0 else diff)
    return GradientErrors(max(level, 0.0), worst, scale)


def atol_level(estimate: Iterable[Tensor], reference: Iterable[Tensor], rtol: float = ALLCLOSE_RTOL) -> float:
    """The smallest atol with ``torch.allclose(a, b, rtol=rtol, atol=atol)`` true for every pair (a, b)."""
    return gradient_errors(estimate, reference, rtol).atol_level


def output_tensors(output: object) -> list[Tensor]:
    """The floating-point tensors of a model output (a tensor, or a tuple/list/dict of them, nested)."""
    if isinstance(output, Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in output_tensors(item)]
    return []


def random_projection_loss(seed: int = 0) -> LossFn:
    """loss = Σ_k mean(out_k ⊙ W_k) with fixed standard-normal W_k (same seed → same W): every output element gets
    a distinct, reproducible upstream gradient (an all-ones gradient, as from ``out.sum()``, can hide errors), at
    the scale of a mean-reduced training loss. ``atol_level`` is absolute, so it scales with this choice."""
    weights: dict[tuple, Tensor] = {}

    def loss(output: object) -> Tensor:
        tensors = output_tensors(output)
        if not tensors:
            raise TypeError(f"model output of type {type(output).__name__} holds no floating-point tensor to differentiate")
        total = None
        for k, t in enumerate(tensors):
            key = (k, tuple(t.shape))
            if key not in weights:
                gen = torch.Generator().manual_seed(seed + k)
                weights[key] = torch.randn(t.shape, generator=gen, dtype=torch.float64)
            term = (t.double() * weights[key].to(t.device)).mean()
            total = term if total is None else total + term
        return total

    return loss


def parameter_gradients(
    model: nn.Module,
    inputs: Tensor,
    loss_fn: LossFn,
    *,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> list[Tensor]:
    """Gradients of ``loss_fn(model(inputs))`` w.r.t. every trainable parameter (zeros for unused ones).

    The global RNG is forked and seeded so that two calls see the same dropout masks and leave the caller's
    random stream untouched. ``autocast_dtype`` runs the forward under ``torch.autocast`` (parameters stay in
    their own dtype).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to compare gradients of")
    devices = [inputs.device.index or 0] if inputs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        scope = (
            torch.autocast(inputs.device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.enable_grad():
            with scope:
                output = model(inputs)
            loss = loss_fn(output)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@dataclass
class GradientComparison:
    """Memory-free vs vanilla gradients of one converted model at one (α, β)."""

    alpha: float
    beta: float  # the β in use (exact stages round it to a dyadic)
    backprop: str
    atol_level: float
    max_rel_err: float
    recon_rel_err: float
    grad_scale: float = 0.0  # max |vanilla gradient|: atol_level is absolute, this is its yardstick
    stage_recon_errors: dict[str, float] = field(default_factory=dict)
    failure: str | None = None  # message of a NonFiniteGradientError, if the memory-free backward raised one

    @property
    def finite(self) -> bool:
        return math.isfinite(self.atol_level)


def compare_gradients(
    model: nn.Module,
    inputs: Tensor,
    *,
    backprop: str = "reversible",
    loss_fn: LossFn | None = None,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> GradientComparison:
    """Run ``model`` (already converted) once with ``backprop`` and once with vanilla backprop at its current
    coefficients; return the gradient and reconstruction errors. Every stage verifies its reconstruction. The
    stages' backprop modes and coefficients are restored afterwards."""
    stages = reversible_stages(model)
    if not stages:
        raise ValueError(f"{type(model).__name__} has no reversible stages: convert it before comparing gradients")
    if backprop == "vanilla":
        raise ValueError("compare_gradients compares a memory-free backprop ('reversible' or 'exact') with vanilla")
    loss_fn = loss_fn or random_projection_loss(seed)
    saved = [(stage.backprop, stage.coupling) for stage in stages]
    try:
        for stage in stages:
            stage.set_backprop(backprop)
            stage.last_check = None
            stage.verify_next_backward(whole=True)
        alpha_used, beta_used = stages[0].alpha, stages[0].beta
        failure = None
        try:
            memory_free = parameter_gradients(model, inputs, loss_fn, seed=seed, autocast_dtype=autocast_dtype)
        except NonFiniteGradientError as err:
            memory_free, failure = None, str(err)
        stage_errors = {_stage_key(stage, k): _check_error(stage) for k, stage in enumerate(stages)}
        for stage in stages:
            stage.set_backprop("vanilla")
            stage._verify_next = False  # a stage whose backward never ran must not verify a later call
        reference = parameter_gradients(model, inputs, loss_fn, seed=seed, autocast_dtype=autocast_dtype)
    finally:
        for stage, (mode, coupling) in zip(stages, saved):
            stage.coupling = coupling  # undo the dyadic rounding of β that switching to exact applies
            stage.set_backprop(mode)
    if memory_free is None:
        errors = GradientErrors(math.inf, math.inf, max(float(g.detach().abs().max()) for g in reference if g.numel()))
    else:
        errors = gradient_errors(memory_free, reference)
    known = [e for e in stage_errors.values() if e is not None]
    return GradientComparison(
        alpha=alpha_used,
        beta=beta_used,
        backprop=backprop,
        atol_level=errors.atol_level,
        max_rel_err=errors.max_rel_err,
        grad_scale=errors.reference_max_abs,
        # a backward aborted by a non-finite gradient leaves the stages below it unchecked
        recon_rel_err=max(known) if known else math.inf,
        stage_recon_errors={k: (math.inf if e is None else e) for k, e in stage_errors.items()},
        failure=failure,
    )


def _stage_key(stage: ReversibleStage, index: int) -> str:
    return stage.stage_name or f"stage{index}"


def _check_error(stage: ReversibleStage) -> float | None:
    return None if stage.last_check is None else float(stage.last_check.relative_error)


def first_stage_reconstruction(model: nn.Module, x: Tensor) -> ReconstructionCheck:
    """Run one forward/backward of the squared-output loss with the first reversible stage verifying its
    reconstruction; an unstable float reconstruction that ends in a non-finite gradient still reports its check
    (it is recorded before the guard fires)."""
    stage = reversible_stages(model)[0]
    stage.verify_next_backward(whole=True)
    try:
        (model(x) ** 2).sum().backward()
    except NonFiniteGradientError:
        pass
    return stage.last_check
