"""``revtal.convert``: turn the residual stages of a pretrained network into reversible stages, in place.

A *family* (one module per model family: :mod:`~revtal.reversible.vit`, :mod:`~revtal.reversible.swin`,
:mod:`~revtal.reversible.resnet`) knows which modules of a network are stages of residual blocks and which part of
a block is a residual branch. :func:`convert` walks the model, lets the first family that recognises a module
convert its stages, and leaves every other layer alone. Parameters are neither added nor renamed: the converted
model's ``state_dict`` keeps the original keys, so original checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from revtal.reversible.coupling import Coupling
from revtal.reversible.stage import BACKPROP_MODES, BranchesOf, ReversibleStage, reversible_stages

METHODS = {
    # method: (alpha, beta, input, output, default backprop)
    "original": (1.0, 0.0, "scaled", "last", "vanilla"),
    "re2": (0.0, 1.0, "duplicate", "mean", "reversible"),
    "dr2net": (1.0, 0.1, "scaled", "last", "reversible"),
}


@dataclass
class StageSpec:
    """One run of residual blocks to convert: ``getattr(parent, attr)`` is replaced by a ReversibleStage over
    ``blocks`` (child names kept), the first ``plain_prefix`` of which stay ordinary layers."""

    parent: nn.Module
    attr: str
    blocks: dict[str, nn.Module]
    branches_of: BranchesOf
    plain_prefix: int = 0
    name: str = ""


@dataclass
class Family:
    name: str
    supported: list[str]
    matches: Callable[[nn.Module], bool]
    find_stages: Callable[[nn.Module, str], list[StageSpec]]
    notes: str = ""


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"converter family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def supported_types() -> list[str]:
    return [t for family in FAMILIES.values() for t in family.supported]


def convert(
    model: nn.Module,
    method: str = "dr2net",
    *,
    alpha: float | None = None,
    beta: float | None = None,
    backprop: str | None = None,
    output: str | None = None,
    input: str | None = None,
    beta_bits: int = 8,
    frac_bits: int = 28,
    preserve_rng: bool = True,
    families: list[str] | None = None,
) -> nn.Module:
    """Convert ``model`` in place and return it.

    ``method``: ``"dr2net"`` (default α=1, β=0.1, Dr²Net's starting point), ``"re2"`` (α=0, β=1 with Re²TAL's
    published convention: input duplicated into both streams, output the mean of the two), or ``"original"``
    (α=1, β=0: the pretrained network itself, vanilla backprop only). ``alpha``/``beta``/``input``/``output``
    override the method's values; ``backprop`` is ``"reversible"`` (memory-free, float), ``"exact"`` (memory-free,
    lossless fixed point; β rounded to a dyadic p/2^k with k ≤ ``beta_bits``), ``"vanilla"`` (plain autograd) or
    ``"checkpoint"`` (plain autograd, each block under ``torch.utils.checkpoint``: with ``method="original"`` this
    is the conventional checkpointing baseline).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    m_alpha, m_beta, m_input, m_output, m_backprop = METHODS[method]
    backprop = backprop or m_backprop
    if backprop not in BACKPROP_MODES:
        raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {backprop!r}")
    coupling = Coupling(
        alpha=m_alpha if alpha is None else alpha,
        beta=m_beta if beta is None else beta,
        input=input or m_input,
        output=output or m_output,
    )
    if backprop in ("reversible", "exact") and not coupling.beta > 0:
        raise ValueError(
            f"backprop={backprop!r} needs beta > 0: the inverse x_(i-1) = y_i / beta divides by beta, and at "
            f"beta={coupling.beta} the y stream carries no information. Use backprop='vanilla' (stores activations) "
            "or a positive beta."
        )
    if reversible_stages(model):
        raise ValueError(
            "model is already converted; change coefficients with revtal.set_coefficients(model, alpha, beta) "
            "and the mode with revtal.set_backprop(model, mode)"
        )
    _ensure_families_loaded()
    chosen = [FAMILIES[n] for n in families] if families else list(FAMILIES.values())
    specs = _find_stages(model, chosen)
    if not specs:
        raise TypeError(
            f"revtal.convert found no supported residual network in {type(model).__module__}.{type(model).__name__}. "
            f"Supported module types: {', '.join(supported_types())}"
        )
    for spec in specs:
        stage = ReversibleStage(
            spec.blocks,
            spec.branches_of,
            Coupling(coupling.alpha, coupling.beta, coupling.input, coupling.output),
            backprop=backprop,
            plain_prefix=spec.plain_prefix,
            preserve_rng=preserve_rng,
            frac_bits=frac_bits,
            beta_bits=beta_bits,
            name=spec.name,
        )
        setattr(spec.parent, spec.attr, stage)
    return model


def _find_stages(model: nn.Module, families: list[Family]) -> list[StageSpec]:
    specs: list[StageSpec] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for family in families:
            if family.matches(module):
                specs.extend(family.find_stages(module, prefix))
                return
        for name, child in module.named_children():
            visit(child, f"{prefix}.{name}" if prefix else name)

    visit(model, "")
    return specs


def _ensure_families_loaded() -> None:
    # importing a family module registers it; the package __init__ imports all of them
    import revtal.reversible  # noqa: F401


def set_coefficients(model: nn.Module, alpha: float, beta: float) -> tuple[float, float]:
    """Set α, β on every reversible stage of ``model``; returns the values in use (β rounded on exact stages) as a
    pair whose ``bits_per_branch`` is the storage that β costs exact backprop (bits per element per branch)."""
    stages = _stages_or_error(model)
    used = [stage.set_coefficients(alpha, beta) for stage in stages]
    return used[0]


def set_backprop(model: nn.Module, mode: str) -> None:
    for stage in _stages_or_error(model):
        stage.set_backprop(mode)


def _stages_or_error(model: nn.Module) -> list[ReversibleStage]:
    stages = reversible_stages(model)
    if not stages:
        raise ValueError(f"{type(model).__name__} has no reversible stages: call revtal.convert(model, ...) first")
    return stages
