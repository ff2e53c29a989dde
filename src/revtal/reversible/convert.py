"""``revtal.convert``: turn the residual stages of a pretrained network into reversible stages, in place.

A *family* (:mod:`revtal.reversible.families`) lists the residual block types of one library as
:class:`BlockRule` s. :func:`convert` walks the model; every ``nn.Sequential``/``nn.ModuleList`` that holds such
blocks becomes a :class:`~revtal.reversible.stage.ReversibleStage`. Which part of a block is a residual branch is
found by tracing the block's forward (:mod:`revtal.reversible.trace`) unless the rule is hand-written (Swin's shared
window masks). Blocks whose shortcut is not the identity (downsampling, projection, pooled skips) stay ordinary
layers inside the stage; every run of shape-preserving blocks between them is reversible. Parameters are neither
added nor renamed: the converted model's ``state_dict`` keeps the original keys, so original checkpoints load with
``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import Tensor, nn

from revtal.reversible.coupling import Coupling
from revtal.reversible.families import builtin_families
from revtal.reversible.function import Branch
from revtal.reversible.rules import BlockRule, Family
from revtal.reversible.stage import BACKPROP_MODES, CallProtocol, ReversibleStage, reversible_stages
from revtal.reversible.trace import BlockPlan, BranchCode, NotResidual, UntraceableBlock, plan_block

METHODS = {
    # method: (alpha, beta, input, output, default backprop)
    "original": (1.0, 0.0, "scaled", "last", "vanilla"),
    "re2": (0.0, 1.0, "duplicate", "mean", "reversible"),
    "dr2net": (1.0, 0.1, "scaled", "last", "reversible"),
}


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"converter family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def registered_families() -> dict[str, Family]:
    """All families: revtal's built-in ones (registered here, on first use) and any registered by the user."""
    if not _BUILTINS_REGISTERED:
        for family in builtin_families():
            if family.name not in FAMILIES:
                register_family(family)
        _BUILTINS_REGISTERED.append(True)
    return FAMILIES


_BUILTINS_REGISTERED: list[bool] = []


def supported_types() -> list[str]:
    return [t for family in registered_families().values() for t in family.supported]


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
    window_chunk: int | None = None,
) -> nn.Module:
    """Convert ``model`` in place and return it.

    ``method``: ``"dr2net"`` (default α=1, β=0.1, Dr²Net's starting point), ``"re2"`` (α=0, β=1 with Re²TAL's
    published convention: input duplicated into both streams, output the mean of the two), or ``"original"``
    (α=1, β=0: the pretrained network itself, vanilla backprop only). ``alpha``/``beta``/``input``/``output``
    override the method's values; ``backprop`` is ``"reversible"`` (memory-free, float), ``"exact"`` (memory-free,
    lossless fixed point; β rounded to a dyadic p/2^k with k ≤ ``beta_bits``), ``"vanilla"`` (plain autograd) or
    ``"checkpoint"`` (plain autograd, each block under ``torch.utils.checkpoint``: with ``method="original"`` this
    is the conventional checkpointing baseline). ``window_chunk``: Video Swin (torchvision) blocks compute their
    window attention this many windows at a time and their MLP as many windows' tokens at a time, holding one
    chunk's attention matrices and MLP activations instead of all of them (:mod:`revtal.reversible.video_swin`);
    ``None`` keeps the library's attention and MLP.
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
    available = registered_families()
    unknown = [n for n in families or () if n not in available]
    if unknown:
        raise ValueError(f"unknown converter families {unknown}; registered: {sorted(available)}")
    chosen = [available[n] for n in families] if families else list(available.values())
    rules = [rule for family in chosen for rule in family.block_rules()]
    if window_chunk is not None and not (isinstance(window_chunk, int) and window_chunk > 0):
        raise ValueError(f"window_chunk must be a positive number of windows or None, got {window_chunk!r}")
    specs = _find_stages(model, rules, {"window_chunk": window_chunk})
    if not specs:
        raise TypeError(
            f"revtal.convert found no supported residual network in {type(model).__module__}.{type(model).__name__}. "
            f"Supported module types: {', '.join(supported_types())}"
        )
    for spec in specs:
        stage = ReversibleStage(
            spec.blocks,
            block_branches,
            Coupling(coupling.alpha, coupling.beta, coupling.input, coupling.output),
            backprop=backprop,
            plain=spec.plain,
            protocol=CallProtocol(spec.protocol),
            preserve_rng=preserve_rng,
            frac_bits=frac_bits,
            beta_bits=beta_bits,
            name=spec.name,
        )
        setattr(spec.parent, spec.attr, stage)
    return model


@dataclass
class _StageSpec:
    parent: nn.Module
    attr: str
    blocks: dict[str, nn.Module]
    plain: list[int]
    protocol: str
    name: str


def _find_stages(model: nn.Module, rules: list[BlockRule], options: dict) -> list[_StageSpec]:
    """Every nn.Sequential/nn.ModuleList holding blocks some rule knows becomes a stage."""
    specs: list[_StageSpec] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, (nn.Sequential, nn.ModuleList)) and any(
                getattr(_rule_for(block, rules), "residual", False) for block in child.children()
            ):
                spec = _stage_spec(module, name, child, path, rules, options)
                if spec is not None:
                    specs.append(spec)
            else:
                visit(child, path)

    visit(model, "")
    return specs


def _rule_for(block: nn.Module, rules: list[BlockRule]) -> BlockRule | None:
    return next((rule for rule in rules if rule.applies(block)), None)


def _stage_spec(parent: nn.Module, attr: str, container: nn.Module, path: str, rules,
                options: dict) -> _StageSpec | None:
    if getattr(parent, "grad_checkpointing", False) or getattr(parent, "gradient_checkpointing", False):
        raise ValueError(
            f"{path}: {type(parent).__name__} has grad_checkpointing enabled; reversible stages already avoid "
            "storing activations: call set_grad_checkpointing(False) (timm) or disable gradient checkpointing first"
        )
    blocks = dict(container.named_children())
    plain, protocols = [], set()
    for i, (child_name, block) in enumerate(blocks.items()):
        block_path = f"{path}.{child_name}"
        rule = _rule_for(block, rules)
        if rule is None:
            known = {r.block_type.__module__ for b in blocks.values() for r in rules if r.applies(b)}
            near = sorted({r.name for r in rules if r.block_type.__module__ in known})
            raise TypeError(
                f"{block_path} is a {type(block).__module__}.{type(block).__qualname__}; in a stage of residual "
                f"blocks the converter supports: {'; '.join(near)}"
            )
        protocols.add(rule.protocol)
        reason = _prepare(block, rule, block_path, options)
        if reason is not None:
            plain.append(i)
    if len(protocols) > 1:
        raise TypeError(f"{path} mixes blocks called in different ways ({sorted(protocols)})")
    if len(plain) == len(blocks):
        return None
    return _StageSpec(parent, attr, blocks, plain, protocols.pop(), path)


def _prepare(block: nn.Module, rule: BlockRule, path: str, options: dict) -> str | None:
    """Attach the rule (and traced plan, and the conversion's options for hand-written rules) to a block; returns
    why it stays ordinary, or None."""
    if not rule.residual:
        return "not a residual block"
    if rule.branches_of is not None:
        reason = rule.ordinary(block) if rule.ordinary else None
        plan = None
    else:
        try:
            plan = plan_block(
                block, inline=rule.inline, fixed=dict(rule.fixed),
                output_index=None if rule.protocol == "tensor" else 0, shortcuts=rule.shortcuts,
            )
            reason = None
        except NotResidual as why:
            plan, reason = None, str(why)
        except UntraceableBlock as error:
            raise TypeError(f"{path}: {error}") from error
    if reason is None:
        block.__dict__["_revtal_rule"] = rule
        block.__dict__["_revtal_plan"] = plan
        block.__dict__["_revtal_path"] = path
        block.__dict__["_revtal_options"] = dict(options)
    return reason


def block_branches(block: nn.Module, context: dict) -> list[Branch]:
    """The branches of a converted block (the stage's ``branches_of``)."""
    rule: BlockRule = block.__dict__["_revtal_rule"]
    if rule.branches_of is not None:
        return rule.branches_of(block, context)
    plan: BlockPlan = block.__dict__["_revtal_plan"]
    path = block.__dict__["_revtal_path"]
    args, kwargs = context.get("call", ((), {}))
    values = plan.bind(path, args, kwargs)
    return [
        Branch(block, partial(_traced_g, code, block, path, tuple(values[n] for n in code.arguments)), True)
        for code in plan.branches
    ]


def _traced_g(code: BranchCode, block: nn.Module, path: str, extras: tuple, x: Tensor, alpha: float) -> Tensor:
    g = code.fn(block, x, *extras, alpha)
    if g.shape != x.shape:
        raise RuntimeError(
            f"{path}: a residual branch changed the stream's shape {tuple(x.shape)} -> {tuple(g.shape)}; "
            "reversible stages need shape-preserving branches"
        )
    return g


def residual_functions(block: nn.Module, *args, **kwargs) -> list[Callable[[Tensor], Tensor]]:
    """The residual branches F_k of one block (without the skip), traced; ``args``/``kwargs`` are the block's extra
    forward arguments (defaults otherwise). For engines that apply the branches themselves (bench peers)."""
    plan = plan_block(block)
    values = plan.bind(_qualified_name(block), args, kwargs)
    return [
        partial(_traced_g, code, block, _qualified_name(block), tuple(values[n] for n in code.arguments), alpha=0.0)
        for code in plan.branches
    ]


def _qualified_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


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
