"""timm's Swin Transformer (V1) blocks, with one shifted-window mask per stage forward.

A Swin block is a pre-norm transformer block on a token grid, with two residual branches::

    F_attn(x) = drop_path(window_attention(norm1(x)))      F_mlp(x) = drop_path(mlp(norm2(x)))

so each stage of L blocks is a reversible stage of 2L branches; patch merging between stages stays ordinary.

Shifted-window attention needs an additive mask that keeps tokens from different image regions apart after the
cyclic shift. It depends only on the padded grid size, the window and the shift, so one mask serves every shifted
block of a stage. timm keeps it in a buffer (``attn_mask``) unless the model accepts dynamic input sizes
(``dynamic_img_size``/``strict_img_size=False``), in which case it rebuilds it on each call. These hand-written
branches then build it once per stage forward (in the stage's ``context``) and hand it to the block's static-mask
path for the duration of the branch call, on that block instance only; the backward recompute reuses that very
tensor, so it sees exactly the forward's mask and spends no time rebuilding it. Every other Swin (timm V2,
torchvision 2D/V2 and Video Swin) converts through the traced rules of :mod:`revtal.reversible.families`; those
libraries build the mask inside the attention call, which revtal leaves untouched (no library function is
patched), so there the mask is rebuilt on every call, recompute included.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial

from timm.models import swin_transformer as timm_swin
from torch import Tensor, nn

from revtal.reversible.function import Branch

TIMM_BLOCK = timm_swin.SwinTransformerBlock


def _timm_shared_mask(block: nn.Module, x: Tensor, context: dict) -> Tensor:
    # timm pads the grid up to whole windows and builds the mask for the padded grid (see SwinTransformerBlock._attn)
    height, width = x.shape[1], x.shape[2]
    win_h, win_w = block.window_size
    padded = (math.ceil(height / win_h) * win_h, math.ceil(width / win_w) * win_w)
    key = ("timm", padded, tuple(block.window_size), tuple(block.shift_size), x.dtype, x.device)
    masks = context.setdefault("swin_masks", {})
    if key not in masks:
        # get_attn_mask reads only the shape, dtype and device of the padded grid it is given
        masks[key] = block.get_attn_mask(x.new_empty((1, *padded, 1)))
    return masks[key]


@contextlib.contextmanager
def _static_mask(block: nn.Module, mask: Tensor):
    """Route a dynamic-mask timm block through its static-mask path with ``mask``, for one call."""
    saved = block.dynamic_mask, block.attn_mask
    block.dynamic_mask, block.attn_mask = False, mask
    try:
        yield
    finally:
        block.dynamic_mask, block.attn_mask = saved


def _timm_attention_branch(block: nn.Module, context: dict, x: Tensor) -> Tensor:
    normed = block.norm1(x)
    if getattr(block, "dynamic_mask", False) and any(block.shift_size):
        with _static_mask(block, _timm_shared_mask(block, normed, context)):
            return block.drop_path1(block._attn(normed))
    return block.drop_path1(block._attn(normed))


def _timm_mlp_branch(block: nn.Module, x: Tensor) -> Tensor:
    # the block runs its MLP on (B, H·W, C) tokens; doing the same keeps (α=1, β=0) bitwise identical
    b, h, w, c = x.shape
    tokens = x.reshape(b, -1, c)
    return block.drop_path2(block.mlp(block.norm2(tokens))).reshape(b, h, w, c)


def timm_swin_branches(block: nn.Module, context: dict) -> list[Branch]:
    return [
        Branch(block, partial(_timm_attention_branch, block, context)),
        Branch(block, partial(_timm_mlp_branch, block)),
    ]


