"""A reversible stage: the original residual blocks of a network, run through the coupling of
:mod:`revtal.reversible.coupling` with a chosen backprop mode.

The stage *is* the container that held the blocks (same child names), so a converted model's state_dict has the
original keys and the original checkpoint loads with ``strict=True``. Which part of a block is the residual branch
F_i is family knowledge, supplied by a converter as ``branches_of(block, context) -> [Branch, ...]`` (a block may
hold several residual branches, e.g. attention and MLP in a transformer block). ``context`` is a fresh dict per
forward call, for values a family computes once per stage and reuses in the recompute (e.g. Swin's shifted-window
masks).

Backprop modes:

* ``reversible`` — memory-free, float arithmetic; reconstruction error grows as β shrinks;
* ``exact`` — memory-free, fixed-point arithmetic with dyadic β; bitwise reconstruction at every (α, β);
* ``vanilla`` — plain autograd through the same coupled architecture: stores everything; the correctness reference.
* ``checkpoint`` — plain autograd with each block under ``torch.utils.checkpoint`` (non-reentrant): the usual
  memory-saving baseline (one stored block input per block, one extra forward per block).

Under ``torch.no_grad()`` (or when nothing needs a gradient) every mode runs the plain loop: no custom Function and
no overhead.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Mapping

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from revtal.reversible.coupling import Coupling, FloatArithmetic
from revtal.reversible.exact import ExactArithmetic, nearest_dyadic, storage_bits_per_branch
from revtal.reversible.function import (
    Branch, ReconstructionCheck, StageRun, run_memory_free, run_plain,
)
from revtal.reversible.replay import checkpoint_layer

BACKPROP_MODES = ("reversible", "exact", "vanilla", "checkpoint")

BranchesOf = Callable[[nn.Module, dict], list[Branch]]

CALL_KINDS = ("tensor", "carry", "tuple")


@dataclass(frozen=True)
class CallProtocol:
    """How the model calls the blocks a stage replaces: ``block(x, *args, **kwargs)`` returns

    * ``"tensor"``: the next x (timm ViT, ResNets, ConvNeXt, Swin);
    * ``"carry"``: ``(x, *args)``, the arguments passed on to the next block (MViT's ``(x, thw)``), changed by
      ordinary blocks (a pooling block shrinks thw) and kept by reversible runs (they preserve the shape);
    * ``"tuple"``: a tuple whose first item is x (Hugging Face layers).
    """

    kind: str = "tensor"

    def __post_init__(self):
        if self.kind not in CALL_KINDS:
            raise ValueError(f"CallProtocol.kind must be one of {CALL_KINDS}, got {self.kind!r}")

    def result(self, x: Tensor, args: tuple):
        """What a run of reversible blocks returns to its caller."""
        if self.kind == "carry":
            return (x, *args)
        return (x,) if self.kind == "tuple" else x

    def split(self, output, args: tuple) -> tuple[Tensor, tuple]:
        """(x, arguments of the next block call) from an ordinary block's output."""
        if self.kind == "tensor":
            return output, args
        if self.kind == "carry":
            return output[0], tuple(output[1:])
        return output[0], args


class _RunStep:
    """One run of reversible blocks, as the item a loop over the stage's blocks calls (see ReversibleStage.__iter__)."""

    def __init__(self, stage: "ReversibleStage", run: list[str]):
        self.stage, self.run = stage, run

    def __call__(self, x: Tensor, *args, **kwargs):
        return self.stage.protocol.result(self.stage._run(self.run, x, args, kwargs), args)

    def __repr__(self) -> str:
        return f"<reversible run {self.run[0]}..{self.run[-1]} of stage {self.stage.stage_name!r}>"


class _OrdinaryStep:
    """One ordinary block of a stage, as the item a loop over the stage's blocks calls: it runs the way the stage's
    own forward runs it (checkpointed in a memory-free stage), so looping over the stage stores no more than calling
    it."""

    def __init__(self, stage: "ReversibleStage", name: str):
        self.stage, self.name = stage, name

    def __call__(self, x: Tensor, *args, **kwargs):
        return self.stage._run_ordinary(self.stage._modules[self.name], x, args, kwargs)

    def __getattr__(self, attribute: str):
        # code that inspects the block it iterates (its attributes, its submodules) sees the block
        if attribute in ("stage", "name"):
            raise AttributeError(attribute)
        return getattr(self.stage._modules[self.name], attribute)

    def __repr__(self) -> str:
        return f"<ordinary block {self.name} of stage {self.stage.stage_name!r}>"


# True while a stage's branch runs (forward or backward recompute): blocks may then be called
_INSIDE_BRANCH: ContextVar[bool] = ContextVar("revtal_inside_branch", default=False)


def _inside_branch(fn: Callable[..., Tensor], *args) -> Tensor:
    token = _INSIDE_BRANCH.set(True)
    try:
        return fn(*args)
    finally:
        _INSIDE_BRANCH.reset(token)


class BypassError(RuntimeError):
    """A block of a reversible stage was called on its own, outside the stage."""


class _RefuseDirectCall:
    """Forward pre-hook on every reversible block: calling it alone would silently run the original residual block
    with ordinary autograd (no memory saved, other arithmetic than the converted model)."""

    def __init__(self, path: str, stage_name: str):
        self.path, self.stage_name = path, stage_name

    def __call__(self, module: nn.Module, args) -> None:
        if _INSIDE_BRANCH.get():
            return  # a hand-written branch may call its block (or a part of it)
        raise BypassError(
            f"{self.path} ({type(module).__qualname__}) is part of reversible stage {self.stage_name!r} and cannot be "
            "called on its own: that would run the original block with ordinary autograd, bypassing the stage. Code "
            "that walks the blocks one by one (timm forward_intermediates, features_only=True, feature wrappers) "
            "cannot see inside a reversible stage; take features at stage boundaries, or use the unconverted model."
        )


class Coefficients(tuple):
    """The (α, β) in use — a plain pair to compare and unpack — carrying what exact backprop stores for that β:
    ``bits_per_branch`` = log2(1/β) bits per element per branch (None outside exact mode, 0 at β = 1)."""

    bits_per_branch: float | None

    def __new__(cls, alpha: float, beta: float, bits_per_branch: float | None = None):
        pair = super().__new__(cls, (alpha, beta))
        pair.bits_per_branch = bits_per_branch
        return pair

    @property
    def alpha(self) -> float:
        return self[0]

    @property
    def beta(self) -> float:
        return self[1]


class ReversibleStage(nn.Module):
    def __init__(
        self,
        blocks: Mapping[str, nn.Module] | Iterable[nn.Module],
        branches_of: BranchesOf,
        coupling: Coupling | None = None,
        *,
        backprop: str = "reversible",
        plain_prefix: int = 0,
        plain: Iterable[int] = (),
        protocol: CallProtocol | None = None,
        preserve_rng: bool = True,
        frac_bits: int = 28,
        beta_bits: int = 8,
        check_finite: bool = True,
        name: str = "",
    ):
        super().__init__()
        items = blocks.items() if isinstance(blocks, Mapping) else enumerate(blocks)
        for child_name, block in items:
            self.add_module(str(child_name), block)
        count = len(self._modules)
        if not 0 <= plain_prefix <= count:
            raise ValueError(f"plain_prefix={plain_prefix} exceeds the {count} blocks of stage {name!r}")
        self.plain = frozenset(range(plain_prefix)) | frozenset(plain)
        if any(not 0 <= i < count for i in self.plain):
            raise ValueError(f"plain block indices {sorted(self.plain)} out of range for the {count} blocks of {name!r}")
        self.branches_of = branches_of
        self.protocol = protocol or CallProtocol()
        self.preserve_rng = preserve_rng
        self.check_finite = check_finite
        self.stage_name = name
        self.exact_arithmetic = ExactArithmetic(frac_bits=frac_bits, beta_bits=beta_bits)
        self.float_arithmetic = FloatArithmetic()
        self.coupling = coupling or Coupling()
        self.backprop = "vanilla"
        self.last_check: ReconstructionCheck | None = None
        self.on_verified: Callable[["ReversibleStage", ReconstructionCheck], None] | None = None
        self._verify_next = False
        self._verifying = False
        self._verify_whole = False
        self._segments = self._split_segments()
        for child_name in self._reversible_names():
            prefix = f"{name}." if name else ""
            self._modules[child_name].register_forward_pre_hook(_RefuseDirectCall(prefix + child_name, name))
        self.set_backprop(backprop)

    def _split_segments(self) -> list[str | list[str]]:
        """Ordinary blocks (a name) and maximal runs of reversible blocks (a list of names), in order."""
        segments: list[str | list[str]] = []
        for i, child_name in enumerate(self._modules):
            if i in self.plain:
                segments.append(child_name)
            elif segments and isinstance(segments[-1], list):
                segments[-1].append(child_name)
            else:
                segments.append([child_name])
        return segments

    def _reversible_names(self) -> list[str]:
        return [n for segment in self._segments if isinstance(segment, list) for n in segment]

    @property
    def plain_prefix(self) -> int:
        """Number of leading ordinary blocks."""
        count = 0
        while count in self.plain:
            count += 1
        return count

    # ----------------------------------------------------------------------------------------------- configuration
    @property
    def alpha(self) -> float:
        return self.coupling.alpha

    @property
    def beta(self) -> float:
        return self.coupling.beta

    @property
    def arithmetic(self):
        return self.exact_arithmetic if self.backprop == "exact" else self.float_arithmetic

    def set_backprop(self, mode: str) -> None:
        if mode not in BACKPROP_MODES:
            raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {mode!r}")
        if mode == "exact":
            c = self.coupling
            self.coupling = Coupling(c.alpha, self._round_beta(c.beta), c.input, c.output)
        if mode in ("reversible", "exact"):
            (self.exact_arithmetic if mode == "exact" else self.float_arithmetic).check(self.coupling)
        self.backprop = mode

    def set_coefficients(self, alpha: float, beta: float) -> Coefficients:
        """Set α and β (one call, at any time). Exact stages round β to the nearest dyadic p/2^k; the values in
        use are returned, with the storage that β costs in exact mode (``bits_per_branch``)."""
        beta = float(beta)
        if self.backprop == "exact":
            beta = self._round_beta(beta)
        candidate = Coupling(alpha, beta, self.coupling.input, self.coupling.output)
        if self.backprop in ("reversible", "exact"):
            self.arithmetic.check(candidate)
        self.coupling = candidate
        return Coefficients(candidate.alpha, candidate.beta, self.storage_bits_per_branch())

    def storage_bits_per_branch(self) -> float | None:
        """Bits per element per branch exact backprop stores at the current β, log2(1/β) (None in other modes)."""
        if self.backprop != "exact":
            return None
        return storage_bits_per_branch(self.coupling.beta, self.exact_arithmetic.beta_bits)

    def _round_beta(self, beta: float) -> float:
        if not beta > 0:
            raise ValueError(
                f"stage {self.stage_name!r}: exact reversible backprop needs beta > 0 (the inverse divides by beta), "
                f"got beta={beta}; use backprop='vanilla' for beta=0"
            )
        return nearest_dyadic(beta, self.exact_arithmetic.beta_bits).value

    def verify_next_backward(self, whole: bool = False) -> None:
        """Keep the true stage input of the next forward and compare it with the reconstruction in backward; the
        result lands in ``last_check`` (and is passed to ``on_verified`` if set). Costs one activation once (exact
        streams, or ``whole``) or 1/16 of one (float streams: by default the check reads a fixed sample of the
        elements, see ``function._CHECK_STRIDE``; measurements of the reconstruction error pass ``whole``)."""
        self._verify_next = True
        self._verify_whole = whole

    # Sequence access. Iterating the stage yields what a loop over the original blocks must call to run the
    # converted network: each ordinary block (run as the stage runs it), and each run of reversible blocks as one
    # step. So a model whose
    # forward walks its blocks (``for blk in self.blocks: x = blk(x, rope=rope)``) runs through the stage. Counting
    # or slicing the blocks means the caller wants them one by one (forward_intermediates, feature extractors),
    # which a reversible stage cannot offer: that raises instead of silently running the original blocks.
    def __iter__(self):
        for segment in self._segments:
            yield _RunStep(self, segment) if isinstance(segment, list) else _OrdinaryStep(self, segment)

    def __len__(self) -> int:
        raise BypassError(
            f"reversible stage {self.stage_name!r} has no per-block length: code that counts or indexes the blocks "
            "to run them one by one (timm forward_intermediates, features_only=True, feature wrappers) would bypass "
            "the stage. Use stage.blocks() to inspect the blocks; run the stage (or iterate it) to compute."
        )

    def __bool__(self) -> bool:
        return True

    def __getitem__(self, index: int | str) -> nn.Module:
        if isinstance(index, str):
            return self._modules[index]
        if isinstance(index, slice):
            raise BypassError(
                f"reversible stage {self.stage_name!r} cannot be sliced: running part of its blocks one by one "
                "(as forward_intermediates does) would bypass the stage"
            )
        return list(self._modules.values())[index]

    # ---------------------------------------------------------------------------------------------------- running
    def blocks(self) -> list[nn.Module]:
        return list(self._modules.values())

    def reversible_blocks(self) -> list[nn.Module]:
        return [self._modules[n] for n in self._reversible_names()]

    def branches(self, context: dict | None = None) -> list[Branch]:
        context = {} if context is None else context
        return [branch for block in self.reversible_blocks() for branch in self.branches_of(block, context)]

    def forward(self, x: Tensor, *args, **kwargs):
        return self._forward_segments(self._segments, x, args, kwargs)

    def entry_blocks(self) -> list[nn.Module]:
        """The ordinary blocks the stage begins with (a downsampling or projecting first block). A model that runs
        them itself, inside one checkpointed region with the layers before the stage (:func:`between_stages`), goes
        on with :meth:`forward_after_entry`: the region then keeps only its own input, not the entry's as well."""
        return [self._modules[n] for n in self._segments[: self._entry_count()]]

    def forward_after_entry(self, x: Tensor, *args, **kwargs):
        """The stage's forward from the output of :meth:`entry_blocks` on."""
        return self._forward_segments(self._segments[self._entry_count():], x, args, kwargs)

    def _entry_count(self) -> int:
        count = 0
        while count < len(self._segments) and not isinstance(self._segments[count], list):
            count += 1
        return count

    def _forward_segments(self, segments: list, x: Tensor, args: tuple, kwargs: dict):
        self._verifying, self._verify_next = self._verify_next, False
        output = self.protocol.result(x, args)
        try:
            for segment in segments:
                if isinstance(segment, list):
                    x = self._run(segment, x, args, kwargs)
                    output = self.protocol.result(x, args)
                else:
                    output = self._run_ordinary(self._modules[segment], x, args, kwargs)
                    x, args = self.protocol.split(output, args)
        finally:
            self._verifying = self._verify_whole = False
        return output

    def _run_ordinary(self, block: nn.Module, x: Tensor, args: tuple, kwargs: dict):
        """A block that stays ordinary (its shortcut is not the identity: a downsampling ResNet block, a pooling
        attention block). In a memory-free stage it is checkpointed, keeping only its input: otherwise its
        activations would be most of what the stage stores."""
        if self.backprop in MEMORY_FREE_MODES and self._needs_grad(x):
            return checkpoint_layer(block, x, *args, **kwargs)
        return block(x, *args, **kwargs)

    def _run(self, names: list[str], x: Tensor, args: tuple, kwargs: dict) -> Tensor:
        context = {"call": (args, kwargs), "stage": self}
        branches = [
            Branch(b.owner, partial(_inside_branch, b.fn), b.includes_skip, b.pieces)
            for n in names for b in self.branches_of(self._modules[n], context)
        ]
        c = self.coupling
        if self.backprop in ("vanilla", "checkpoint") or not self._needs_grad(x):
            checkpointed = self.backprop == "checkpoint" and self._needs_grad(x)
            out_x, out_y = run_plain(x, branches, c, checkpoint_blocks=checkpointed)
            if out_y is None:
                out_y = torch.zeros_like(out_x) if c.output == "mean" else out_x
            return c.combine_output(out_x, out_y)
        return self._memory_free(x, branches)

    def _needs_grad(self, x: Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    @torch.compiler.disable
    def _memory_free(self, x: Tensor, branches: list[Branch]) -> Tensor:
        trainable_of_owner: dict[int, list[Tensor]] = {}
        params: list[list[Tensor]] = []
        for branch in branches:
            key = id(branch.owner)
            if key not in trainable_of_owner:
                trainable_of_owner[key] = [p for p in branch.owner.parameters() if p.requires_grad]
            params.append(trainable_of_owner[key])
        verify = self._verifying or self._verify_next
        self._verify_next = False
        run = StageRun(
            branches=branches,
            coupling=self.coupling,
            arithmetic=self.arithmetic,
            params=params,
            preserve_rng=self.preserve_rng and self.training,
            verify=verify,
            verify_whole=self._verify_whole,
            on_verified=self._record_check,
            name=self.stage_name,
            check_finite=self.check_finite,
            combined_output=self.coupling.output == "mean" and not self.arithmetic.exact,
        )
        out_x, out_y = run_memory_free(run, x)
        return out_x if run.combined_output else self.coupling.combine_output(out_x, out_y)

    def _record_check(self, check: ReconstructionCheck) -> None:
        self.last_check = check
        if self.on_verified is not None:
            self.on_verified(self, check)

    def extra_repr(self) -> str:
        c = self.coupling
        return (
            f"name={self.stage_name!r}, alpha={c.alpha}, beta={c.beta}, backprop={self.backprop}, "
            f"input={c.input}, output={c.output}, plain={sorted(self.plain)}"
        )


def reversible_stages(model: nn.Module) -> list[ReversibleStage]:
    return [m for m in model.modules() if isinstance(m, ReversibleStage)]


MEMORY_FREE_MODES = ("reversible", "exact")


def runs_memory_free(model: nn.Module) -> bool:
    """Whether a forward of ``model`` now would run some reversible stage memory-free."""
    return torch.is_grad_enabled() and any(s.backprop in MEMORY_FREE_MODES for s in reversible_stages(model))


def between_stages(model: nn.Module, layer: Callable, *inputs: Tensor, modules: Iterable[nn.Module] | None = None):
    """Run ``layer(*inputs)``, a non-reversible part of ``model`` between its stages (patch embedding, patch
    merging, a stem, lateral fusions followed by the next stage's entry blocks). Once the stages are memory-free
    these parts are what a step keeps (a patch merging saves its normalisation's input and its projection's input:
    twice the stage output the reversible stage already keeps as its two streams); so in a model whose stages run
    memory-free they run under non-reentrant checkpointing, which keeps only their inputs — the previous stage's
    output, kept anyway — and recomputes them in backward (the same function: gradients are unchanged). BatchNorm
    statistics are updated once (:func:`revtal.reversible.replay.checkpoint_layer`); ``modules`` are the modules a
    ``layer`` that is not itself a module runs. Under no_grad it runs plainly."""
    if not runs_memory_free(model):
        return layer(*inputs)
    return checkpoint_layer(layer, *inputs, modules=modules)
