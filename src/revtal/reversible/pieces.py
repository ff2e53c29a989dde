"""Residual branches that act on disjoint groups of tokens, computed and differentiated one group at a time.

A Video Swin attention branch acts on each window alone and its MLP branch on each token alone: F(x) restricted to
the tokens of a piece is a function of those tokens only. A branch that says so (``Branch.pieces``) lets a
memory-free stage avoid every branch-sized tensor but its streams:

* :func:`g_by_pieces` — the no-grad forward: G(x) = F(x) + α·x written piece by piece into one output tensor. The
  whole-input temporaries of the branch (the windows as one tensor, the output before its reverse partition and
  shift) are never formed.
* :func:`backward_by_pieces` — the backward of one node: each piece is recomputed with grad, its part of
  y_{i-1} = x_i − G(x_{i-1}) is written over x_i's rows, and its vector-Jacobian product goes straight into the rows
  of the stream gradient, which accumulates in a tensor the stage already owns. The gradient of the branch input is
  never gathered from per-piece tensors and the recompute never holds the branch's whole activations.

Elementwise maths on gathered rows is the same maths, so G's values and the reconstruction are bitwise the
whole-tensor computation wherever the branch's own piece is (row blocks of matrix products, whole-row LayerNorm:
bitwise on CPU, tests/test_convert_swin.py). Parameter gradients are sums over pieces: the same terms in another
order, equal to round-off.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Piece:
    """A group of tokens F acts on alone.

    ``rows``: the rows of ``x.reshape(-1, C)`` the piece reads, in the order ``fn`` takes them (a slice or an index
    tensor). ``fn``: F's values at those rows, from those rows of x. ``kept``: the positions among ``fn``'s rows
    that are F's (an index tensor); the others are padding rows the branch adds itself (a window reaching past the
    input), whose ``rows`` entry is any valid row and whose output is dropped. None: every row is F's. (Positions,
    not a boolean mask: selecting by a mask has a data-dependent size, which revtal plan's fake tensors cannot
    follow.)
    """

    rows: slice | Tensor
    fn: Callable[[Tensor], Tensor]
    kept: Tensor | None = None

    def read(self, flat: Tensor) -> Tensor:
        return _read_rows(flat, self.rows)

    def targets(self) -> slice | Tensor:
        """The rows of the output that this piece's kept rows land on."""
        return self.rows if self.kept is None else self.rows.index_select(0, self.kept)

    def keep(self, values: Tensor) -> Tensor:
        return values if self.kept is None else values.index_select(0, self.kept)


def write_rows(out: Tensor, rows: slice | Tensor, values: Tensor) -> None:
    if isinstance(rows, slice):
        out[rows] = values
    else:
        out.index_copy_(0, rows, values)


def add_rows(out: Tensor, rows: slice | Tensor, values: Tensor) -> None:
    if isinstance(rows, slice):
        out[rows] += values
    else:
        out.index_add_(0, rows, values)


def g_by_pieces(pieces: Sequence[Piece], x: Tensor, g: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """G(x) = g(F(x), x) computed piece by piece into one tensor (no autograd graph is built: call under no_grad).
    Every row of ``x`` must belong to exactly one piece's kept rows."""
    flat = x.reshape(-1, x.size(-1))
    out = None
    for piece in pieces:
        rows = piece.read(flat)
        values = piece.keep(g(piece.fn(rows), rows))
        if out is None:  # G's dtype is F's under autocast, promoted by α·x: known once a piece has run
            out = values.new_empty((flat.size(0), values.size(-1)))
        write_rows(out, piece.targets(), values)
        del rows, values
    return out.view(*x.shape[:-1], out.size(-1))


def backward_by_pieces(pieces: Sequence[Piece], v: Tensor, x: Tensor, y_out: Tensor, grad_x: Tensor,
                       accumulate_into: Tensor, g: Callable[[Tensor, Tensor], Tensor], params: list[Tensor],
                       recompute: Callable[[], contextlib.AbstractContextManager]) -> list[Tensor | None]:
    """One node's backward, piece by piece, for float streams.

    ``v``: the branch input x_{i-1}; ``x``: x_i; ``y_out`` receives y_{i-1} = x_i − G(x_{i-1}) (it may be ``x``
    itself, overwritten row by row); ``grad_x``: ∂L/∂x_i; ``accumulate_into``: holds β·∂L/∂y_i (or zeros) and
    receives (∂G/∂x)ᵀ ∂L/∂x_i, becoming ∂L/∂x_{i-1}. ``recompute()``: the forward's state for the branch's
    recompute (autocast, torch-function modes, BatchNorm statistics). Returns the parameters' gradients, summed
    over the pieces (None for a parameter the branch does not use)."""
    c = v.size(-1)
    flat_v, flat_x, flat_y = v.reshape(-1, c), x.reshape(-1, c), y_out.reshape(-1, c)
    flat_grad, flat_acc = grad_x.reshape(-1, grad_x.size(-1)), accumulate_into.reshape(-1, c)
    totals: list[Tensor | None] = [None] * len(params)
    for piece in pieces:
        rows = piece.read(flat_v).detach().requires_grad_(True)
        with recompute():
            values = g(piece.fn(rows), rows)
        targets = piece.targets()
        write_rows(flat_y, targets, _read_rows(flat_x, targets) - piece.keep(values.detach()))
        grad_rows = piece.read(flat_grad).to(values.dtype)
        if piece.kept is not None:  # padding rows are not F's: nothing flows back from them
            grad_rows = torch.zeros_like(grad_rows).index_copy_(0, piece.kept, piece.keep(grad_rows))
        grads = torch.autograd.grad(values, [rows, *params], grad_rows, allow_unused=True)
        del values, grad_rows, rows
        add_rows(flat_acc, targets, piece.keep(grads[0]))
        for j, grad in enumerate(grads[1:]):
            if grad is not None:
                totals[j] = grad if totals[j] is None else totals[j].add_(grad)
        del grads
    return totals


def _read_rows(flat: Tensor, rows: slice | Tensor) -> Tensor:
    return flat[rows] if isinstance(rows, slice) else flat.index_select(0, rows)
