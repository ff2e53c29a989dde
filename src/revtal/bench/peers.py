"""Peer libraries on the same network: RevLib and MemCNN running the transformer blocks of a video ViT.

Both libraries implement the RevNet coupling of two equally wide streams, ``(x1, x2) -> (x2, x1 + F(x2))``, which is
exactly Re²TAL's rewiring (α=0, β=1): the stack applies the attention and MLP branches of each timm block alternately
to the two streams. :class:`PeerStack` therefore runs *the same branch functions* (those of
:func:`revtal.reversible.convert.residual_functions`, traced from the block) with the same convention as ``revtal.convert(model, "re2")`` — input
duplicated into both streams, output the mean of the two — and only the engine that makes backward memory-free
differs. The libraries are an optional extra (``pip install 'revtal[bench]'``) imported lazily: without them the
benchmark reports the mode as unavailable.

APIs used (as documented by the projects): ``revlib.ReversibleSequential(*modules, split_dim=-1)`` (one module per
branch, streams split from the last dimension) and ``memcnn.InvertibleModuleWrapper(fn=memcnn.AdditiveCoupling(Fm,
Gm, split_dim=-1), keep_input=False, keep_input_inverse=False)`` (one wrapper per block: Fm = attention, Gm = MLP).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from revtal.reversible.convert import residual_functions

INSTALL_HINT = "pip install 'revtal[bench]'"


class PeerUnavailable(RuntimeError):
    """The peer library cannot run here (not installed, or not applicable to the model)."""


def import_peer(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise PeerUnavailable(f"{name} is not installed ({INSTALL_HINT})") from err


class BranchModule(nn.Module):
    """One residual branch F of a transformer block as a module of its own (what the peer libraries wrap). The block
    is shared, not copied: parameters are the block's own."""

    def __init__(self, block: nn.Module, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.block = block
        self._fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x)


def _branch_pairs(blocks: nn.Module) -> list[tuple[BranchModule, BranchModule]]:
    pairs = []
    for name, block in blocks.named_children():
        if type(block) is not Block:
            raise PeerUnavailable(
                f"blocks.{name} is a {type(block).__name__}; the peer stacks wrap timm Blocks (attention, MLP) only"
            )
        attention, mlp = residual_functions(block)
        pairs.append((BranchModule(block, attention), BranchModule(block, mlp)))
    return pairs


def _revlib_runner(blocks: nn.Module) -> nn.Module:
    revlib = import_peer("revlib")
    modules = [branch for pair in _branch_pairs(blocks) for branch in pair]
    return revlib.ReversibleSequential(*modules, split_dim=-1)


def _memcnn_runner(blocks: nn.Module) -> nn.Module:
    memcnn = import_peer("memcnn")
    wrappers = [
        memcnn.InvertibleModuleWrapper(
            fn=memcnn.AdditiveCoupling(Fm=attention, Gm=mlp, split_dim=-1), keep_input=False, keep_input_inverse=False
        )
        for attention, mlp in _branch_pairs(blocks)
    ]
    return nn.Sequential(*wrappers)


PEER_RUNNERS: dict[str, Callable[[nn.Module], nn.Module]] = {"revlib": _revlib_runner, "memcnn": _memcnn_runner}


class PeerStack(nn.Module):
    """Drop-in replacement for a ViT's ``blocks``: the same blocks run by a peer library as a two-stream stack."""

    def __init__(self, blocks: nn.Module, library: str):
        super().__init__()
        if library not in PEER_RUNNERS:
            raise ValueError(f"unknown peer library {library!r}; known: {', '.join(PEER_RUNNERS)}")
        self.library = library
        self.runner = PEER_RUNNERS[library](blocks)

    def forward(self, x: Tensor) -> Tensor:
        streams = self.runner(torch.cat([x, x], dim=-1))
        first, second = streams.chunk(2, dim=-1)
        return (first + second) / 2


def attach_peer(net: nn.Module, library: str) -> nn.Module:
    """Replace ``net.blocks`` (a sequence of timm Blocks) by a :class:`PeerStack`; returns ``net``."""
    blocks = getattr(net, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise PeerUnavailable(
            f"{library} peer: {type(net).__name__} has no .blocks sequence of transformer blocks to wrap"
        )
    net.blocks = PeerStack(blocks, library)
    return net
