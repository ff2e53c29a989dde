"""Find the residual branches of a block by tracing its forward with ``torch.fx``.

A block qualifies when its forward is a chain of residual sums on one stream::

    s_0 = x,   s_k = S_k(s_{k-1}) + F_k(s_{k-1})  (either operand order),   output = tail(s_K)

where every F_k reads the stream only through s_{k-1} (and may read the stream's *shape* anywhere) and the optional
tail (a ResNet's post-sum ReLU, a Swin block's reshape back to the token grid) reads only s_K. Each residual sum
becomes one branch G_k; the tail joins the last one. The block's own child modules are opaque (not traced into, so
attention internals never matter); ``nn.Identity`` children are looked through, so ``shortcut = Identity()`` is an
identity shortcut. The shortcut S_k is the identity, or a child module of a type the converter declares
shape-preserving (``shortcuts``: timm MetaFormer's per-channel ``Scale``, ``res_scale``). A block whose output is not
of this form (a downsampling or projecting shortcut, a pooled skip) is *ordinary*: :func:`plan_block` returns the
reason.

Each branch is compiled to a plain function of ``(block, x, <extra forward arguments it uses>, alpha)`` computing

    G_α(x) = F(x) + α·S(x)    (a tail applies after the sum: G_α(x) = tail(F(x) + α·S(x)))

A shortcut module S is part of G, computed from the same x: the step stays invertible (the inverse only recomputes G),
α scales the whole original skip S(x), and a learnable S gets its gradient like any branch parameter.

At α=1 the residual sum is the block's own operation with its own operand order (``x + F(x)`` vs ``F(x) + x``,
in place or not), so the result is the pretrained block bit for bit, memory layout included. The functions hold no
module: they look submodules up on the block they are given, so plans survive ``copy.deepcopy`` of the model.
"""

from __future__ import annotations

import importlib
import inspect
import operator
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import Tensor, nn

_SUM_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_SUM_METHODS = {"add", "add_"}
_SHAPE_METHODS = {"size", "dim"}


class NotResidual(Exception):
    """The block's forward is not a chain of identity residual sums (it stays an ordinary layer)."""


class UntraceableBlock(TypeError):
    """The block's forward could not be traced at all."""


def residual_sum(op: str, first: Tensor, second: Tensor, skip_first: bool, alpha: float) -> Tensor:
    """The residual sum of a traced block with the skip scaled by α; ``op`` names the block's own sum."""
    if alpha == 1.0:
        if op == "iadd" and not skip_first:
            return operator.iadd(first, second)  # in place on F(x), as the block does (never on the stream)
        return operator.add(first, second)
    skip, branch = (first, second) if skip_first else (second, first)
    if alpha == 0.0:
        return branch
    return branch + alpha * skip


class _BlockTracer(fx.Tracer):
    def __init__(self, inline: tuple[str, ...] = ()):
        super().__init__()
        self.inline = inline

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, nn.Identity) or qualified_name in self.inline:
            return False
        return True


def _without_keywords(block: nn.Module, names: list[str]) -> nn.Module:
    """A module whose forward calls ``block.forward`` with its named arguments only (not through ``block(...)``, so
    the block's children are traced as ``block.<child>``). fx reads the signature of the class's forward."""
    arguments = ", ".join(names)
    namespace: dict = {}
    exec(f"def forward(self, {arguments}):\n    return self.block.forward({arguments})\n", namespace)
    wrapper = type("_WithoutKeywords", (nn.Module,), {"forward": namespace["forward"]})()
    wrapper.block = block
    return wrapper


@dataclass
class BranchCode:
    fn: Callable[..., Tensor]
    arguments: tuple[str, ...]  # extra forward arguments it reads, in order
    keeps_shape: bool  # G's output must have the stream's shape (false only for the last branch before its tail)
    source: str = ""
    names: dict[str, Any] = field(default_factory=dict)  # the globals the source refers to

    def __reduce__(self):
        # the compiled function cannot be pickled (torch.save of a whole converted model): its source can
        names = {k: ("module", v.__name__) if isinstance(v, types.ModuleType) else ("object", v)
                 for k, v in self.names.items()}
        return _rebuild_branch, (self.source, names, self.arguments, self.keeps_shape)


def _compile(source: str, names: dict[str, Any], label: str) -> Callable[..., Tensor]:
    namespace = dict(names)
    exec(compile(source, label, "exec"), namespace)
    return namespace["forward"]


def _rebuild_branch(source: str, names: dict, arguments: tuple[str, ...], keeps_shape: bool) -> BranchCode:
    resolved = {k: importlib.import_module(v) if kind == "module" else v for k, (kind, v) in names.items()}
    return BranchCode(_compile(source, resolved, "<revtal branch>"), arguments, keeps_shape, source, resolved)


@dataclass
class BlockPlan:
    """The residual branches of one block instance."""

    block_type: str
    branches: list[BranchCode]
    signature: inspect.Signature
    fixed: dict[str, Any] = field(default_factory=dict)  # arguments traced as constants

    def bind(self, path: str, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The block's extra forward arguments of one call, by name (defaults filled in)."""
        bound = self.signature.bind(None, *args, **kwargs)
        bound.apply_defaults()
        values = dict(list(bound.arguments.items())[1:])
        for name, constant in self.fixed.items():
            if values.get(name) is not constant and values.get(name) != constant:
                raise ValueError(
                    f"{path} ({self.block_type}) was converted for {name}={constant!r} and is called with "
                    f"{name}={values.get(name)!r}"
                )
        return values


def _qualified(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _is_sum(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _SUM_FUNCTIONS:
        return len(node.args) == 2 and not node.kwargs
    return node.op == "call_method" and node.target in _SUM_METHODS and len(node.args) == 2 and not node.kwargs


def _sum_op(node: fx.Node) -> str:
    if node.op == "call_function":
        return "iadd" if node.target is operator.iadd else "add"
    return "iadd" if node.target == "add_" else "add"


def _is_shape_read(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is getattr and len(node.args) == 2:
        return node.args[1] in ("shape", "ndim", "dtype", "device")
    return node.op == "call_method" and node.target in _SHAPE_METHODS


def plan_block(
    block: nn.Module,
    *,
    inline: tuple[str, ...] = (),
    fixed: dict[str, Any] | None = None,
    output_index: int | None = None,
    shortcuts: tuple[type, ...] = (),
) -> BlockPlan:
    """Trace ``block`` and split it into residual branches. Raises :class:`NotResidual` (with the reason) for an
    ordinary block and :class:`UntraceableBlock` when its forward cannot be traced. ``fixed`` traces the named
    forward arguments as constants (for arguments used in control flow); ``output_index`` picks the stream out of a
    tuple output; ``shortcuts`` are module types that may sit on a shortcut (shape-preserving by construction)."""
    fixed = dict(fixed or {})
    signature = inspect.signature(block.forward)
    root, prefix = block, ""
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        # fx cannot trace **kwargs: trace the block's forward through a wrapper without them (checked at call time)
        name = next(p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD)
        fixed[name] = {}
        root, prefix = _without_keywords(block, [p for p in signature.parameters if p != name]), "block."
    try:
        graph = _BlockTracer(tuple(prefix + n for n in inline)).trace(
            root, concrete_args={k: v for k, v in fixed.items() if k in inspect.signature(root.forward).parameters}
            or None,
        )
        if prefix:
            for node in graph.nodes:
                if node.op in ("call_module", "get_attr"):
                    node.target = node.target.removeprefix(prefix)
    except Exception as error:  # fx raises many types; all mean the same to the caller
        raise UntraceableBlock(
            f"{_qualified(block)} cannot be traced with torch.fx ({type(error).__name__}: {error})"
        ) from error
    return BlockPlan(_qualified(block), _split(graph, block, output_index, shortcuts), signature, fixed)


def _split(graph: fx.Graph, block: nn.Module, output_index: int | None, shortcuts: tuple[type, ...] = ()
           ) -> list[BranchCode]:
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise NotResidual("its forward takes no input")
    x0 = placeholders[0]
    output = next(n for n in graph.nodes if n.op == "output")
    result = output.args[0]
    if isinstance(result, (tuple, list)):
        if output_index is None:
            raise NotResidual("its forward returns a tuple and the converter was not told which item is the stream")
        result = result[output_index]
    if not isinstance(result, fx.Node):
        raise NotResidual("its output is not computed from its input")

    # streams[n]: indices of the stream values whose *values* n depends on (shape reads carry none)
    streams: dict[fx.Node, frozenset[int]] = {x0: frozenset({0})}
    stream_nodes: list[fx.Node] = [x0]
    sums: list[tuple[fx.Node, int]] = []  # (sum node, index of its skip argument)
    # nodes that are the stream itself, reshaped views of it, or a declared shortcut module applied to it
    views_of: dict[fx.Node, int] = {x0: 0}
    for node in graph.nodes:
        if node.op == "placeholder" or node.op == "output":
            streams.setdefault(node, frozenset())
            continue
        inputs = node.all_input_nodes
        if _is_shape_read(node):
            streams[node] = frozenset()
            continue
        deps = frozenset().union(*(streams.get(i, frozenset()) for i in inputs)) if inputs else frozenset()
        current = len(stream_nodes) - 1
        if _is_sum(node):
            a, b = node.args
            for skip_pos, (skip, other) in enumerate(((a, b), (b, a))):
                if (
                    isinstance(skip, fx.Node) and views_of.get(skip) == current and isinstance(other, fx.Node)
                    and streams.get(other) == frozenset({current})
                ):
                    sums.append((node, skip_pos))
                    stream_nodes.append(node)
                    streams[node] = frozenset({current + 1})
                    views_of[node] = current + 1
                    break
            else:
                streams[node] = deps
            if node in views_of:
                continue
        else:
            streams[node] = deps
        if node.op == "call_method" and node.target in ("reshape", "view", "flatten", "contiguous") and (
            isinstance(node.args[0], fx.Node) and node.args[0] in views_of
            and all(streams.get(i, frozenset()) == frozenset() for i in node.all_input_nodes if i is not node.args[0])
        ):
            views_of[node] = views_of[node.args[0]]
        elif (
            shortcuts and node.op == "call_module" and len(node.args) == 1 and not node.kwargs
            and node.args[0] in views_of and isinstance(block.get_submodule(node.target), shortcuts)
        ):
            views_of[node] = views_of[node.args[0]]

    if not sums:
        raise NotResidual(_why_not_residual(graph, x0, streams))
    last = len(stream_nodes) - 1
    if streams.get(result) != frozenset({last}):
        raise NotResidual(
            "its output is not a function of its last residual sum alone (the stream is combined with an earlier "
            "value or the shortcut is not the identity)"
        )

    tail = _ancestors(result, stop=stream_nodes[-1])
    for node in tail:
        if _is_sum(node):
            raise NotResidual(
                "after its last residual sum the stream is added to a transformed copy of itself (the shortcut "
                "is not the identity)"
            )
    branches = []
    for k, (sum_node, skip_pos) in enumerate(sums):
        end = result if k == len(sums) - 1 else sum_node
        branches.append(
            _compile_branch(graph, block, stream_nodes[k], sum_node, skip_pos, end, streams, stream_nodes, k)
        )
    return branches


def _why_not_residual(graph: fx.Graph, x0: fx.Node, streams: dict) -> str:
    for node in graph.nodes:
        if _is_sum(node):
            a, b = node.args
            if all(isinstance(v, fx.Node) and 0 in streams.get(v, ()) for v in (a, b)):
                shortcut = a if _depth(a) <= _depth(b) else b
                via = sorted({n.target for n in _ancestors(shortcut, stop=x0) if n.op == "call_module"})
                if via:
                    return f"its shortcut is not the identity (it passes through {', '.join(map(str, via))})"
    return "it has no residual sum x + F(x) of its input"


def _ancestors(node: fx.Node, stop: fx.Node) -> list[fx.Node]:
    seen, todo = [], [node]
    while todo:
        n = todo.pop()
        if n in seen or n is stop:
            continue
        seen.append(n)
        todo.extend(n.all_input_nodes)
    return seen


def _depth(node: Any) -> int:
    return len(_ancestors(node, stop=None)) if isinstance(node, fx.Node) else 0


def _compile_branch(
    graph: fx.Graph, block: nn.Module, start: fx.Node, sum_node: fx.Node, skip_pos: int, end: fx.Node,
    streams: dict, stream_nodes: list[fx.Node], k: int,
) -> BranchCode:
    # nodes whose values G needs; a shape read of a stream value reads the input instead (all share its shape)
    needed: set[fx.Node] = set()
    shape_reads: set[fx.Node] = set()
    todo = [end]
    while todo:
        node = todo.pop()
        if node in needed or node is start:
            continue
        needed.add(node)
        if _is_shape_read(node) and node.args[0] in stream_nodes:
            shape_reads.add(node)
            continue
        todo.extend(node.all_input_nodes)
    for node in needed:
        if node.op != "placeholder" and streams.get(node, frozenset()) - {k, k + 1}:
            raise NotResidual(
                f"residual branch {k + 1} reads the stream from before the previous residual sum (at {node.name})"
            )
    extras = [n for n in graph.nodes if n in needed and n.op == "placeholder"]
    if any(streams.get(n) for n in extras):
        raise NotResidual(f"residual branch {k + 1} reads the block input after the first residual sum")
    new = fx.Graph()
    x_in = new.placeholder("x")
    env: dict[fx.Node, fx.Node] = {start: x_in}
    for node in extras:
        env[node] = new.placeholder(node.name)
    alpha = new.placeholder("alpha")
    for node in graph.nodes:
        if node not in needed or node.op == "placeholder":
            continue
        if node is sum_node:
            a, b = (env[v] if isinstance(v, fx.Node) else v for v in node.args)
            env[node] = new.call_function(residual_sum, (_sum_op(node), a, b, skip_pos == 0, alpha))
        elif node in shape_reads:
            env[node] = new.node_copy(node, lambda n: x_in if n is node.args[0] else env[n])
        else:
            env[node] = new.node_copy(node, lambda n: env[n])
    new.output(env[end])
    new.lint()
    code = new.python_code(root_module="self")
    names = dict(code.globals)
    fn = _compile(code.src, names, f"<revtal branch {k + 1} of {type(block).__qualname__}>")
    return BranchCode(fn, tuple(n.target for n in extras), end is sum_node, code.src, names)

