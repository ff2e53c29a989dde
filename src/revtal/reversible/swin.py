"""Swin Transformers — timm's image ``SwinTransformer`` and torchvision's Video Swin (``swin3d_t/s/b``).

A Swin block is a pre-norm transformer block on a token grid, with two residual branches::

    F_attn(x) = drop_path(window_attention(norm1(x)))      F_mlp(x) = drop_path(mlp(norm2(x)))

so each stage of L blocks is a reversible stage of 2L branches. Patch merging between stages changes the token grid
and width; it stays an ordinary layer whose activations are kept, as in Re²TAL and Dr²Net.

Shifted-window attention needs an additive mask that keeps tokens from different image regions apart after the
cyclic shift. It depends only on the padded grid size, the window and the shift, so one mask serves every shifted
block of a stage. The converter builds it once per stage forward (in the stage's ``context``) and the backward
recompute reuses that very tensor. This matters twice over: the recomputed attention sees exactly the mask of the
forward pass (a requirement for bitwise reconstruction), and no time is spent rebuilding it — torchvision rebuilds
the (windows × N × N) mask with 27 slice writes and two masked fills in *every* shifted block call, and reversible
backprop calls every branch twice. The price is that the mask lives until the stage's backward: for Swin3D at
32×224² input, stage 1 holds 128 windows × 392² floats ≈ 79 MB; later stages hold far less.

* timm keeps the mask in a buffer (``attn_mask``) unless the model accepts dynamic input sizes
  (``dynamic_img_size``/``strict_img_size=False``), in which case it rebuilds it on each call; the converter then
  builds it once per stage and hands it to the block's static-mask path for the duration of the branch call.
* torchvision builds it inside the function ``shifted_window_attention_3d``; on converting a Video Swin the
  converter wraps that library's mask builder so that, inside a converted branch only, the mask comes from the
  stage's context (outside a converted branch the wrapper calls the library function unchanged).
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from functools import partial

import torchvision.models.swin_transformer as tv_swin
import torchvision.models.video.swin_transformer as tv_swin3d
from timm.models import swin_transformer as timm_swin
from torch import Tensor, nn

from revtal.reversible.convert import Family, StageSpec, register_family
from revtal.reversible.function import Branch

TIMM_BLOCK = timm_swin.SwinTransformerBlock
VIDEO_BLOCK = tv_swin.SwinTransformerBlock
VIDEO_ATTENTION = tv_swin3d.ShiftedWindowAttention3d

SUPPORTED = [
    f"{TIMM_BLOCK.__module__}.{TIMM_BLOCK.__qualname__} (timm SwinTransformer stages, `.blocks`)",
    f"{VIDEO_BLOCK.__module__}.{VIDEO_BLOCK.__qualname__} with attention {VIDEO_ATTENTION.__module__}."
    f"{VIDEO_ATTENTION.__qualname__} (torchvision SwinTransformer3d / swin3d_t, swin3d_s, swin3d_b)",
]


def _qualified(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _unsupported(path: str, module: nn.Module, why: str = "") -> TypeError:
    return TypeError(
        f"{path} is a {_qualified(module)}{why}; the Swin converter supports: {'; '.join(SUPPORTED)}"
    )


# --------------------------------------------------------------------------------------------------------- timm
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


def _is_timm_stage(module: nn.Module) -> bool:
    blocks = getattr(module, "blocks", None)
    return isinstance(blocks, nn.Sequential) and any(isinstance(b, TIMM_BLOCK) for b in blocks)


def _timm_stages(module: nn.Module, prefix: str) -> list[StageSpec]:
    name = f"{prefix}.blocks" if prefix else "blocks"
    for child_name, block in module.blocks.named_children():
        if type(block) is not TIMM_BLOCK:
            raise _unsupported(f"{name}.{child_name}", block)
    if getattr(module, "grad_checkpointing", False):
        raise ValueError(
            f"{prefix or type(module).__name__} has timm grad_checkpointing enabled; reversible stages already avoid "
            "storing activations: call set_grad_checkpointing(False) before converting"
        )
    return [StageSpec(module, "blocks", dict(module.blocks.named_children()), timm_swin_branches, 0, name)]


# -------------------------------------------------------------------------------------------------- torchvision
# The mask cache of the stage whose branch is running in this thread/task, or None outside converted branches.
_ACTIVE_MASKS: ContextVar[dict | None] = ContextVar("revtal_swin3d_masks", default=None)
_library_mask_3d = tv_swin3d._compute_attention_mask_3d


def _stage_shared_mask_3d(x: Tensor, size_dhw, window_size, shift_size) -> Tensor:
    masks = _ACTIVE_MASKS.get()
    if masks is None:
        return _library_mask_3d(x, size_dhw, window_size, shift_size)
    key = ("swin3d", tuple(size_dhw), tuple(window_size), tuple(shift_size), x.dtype, x.device)
    if key not in masks:
        masks[key] = _library_mask_3d(x, size_dhw, window_size, shift_size)
    return masks[key]


def _install_mask_sharing() -> None:
    # shifted_window_attention_3d looks the mask builder up in its module's globals at call time
    tv_swin3d._compute_attention_mask_3d = _stage_shared_mask_3d


def _video_attention_branch(block: nn.Module, context: dict, x: Tensor) -> Tensor:
    token = _ACTIVE_MASKS.set(context.setdefault("swin3d_masks", {}))
    try:
        return block.stochastic_depth(block.attn(block.norm1(x)))
    finally:
        _ACTIVE_MASKS.reset(token)


def _video_mlp_branch(block: nn.Module, x: Tensor) -> Tensor:
    return block.stochastic_depth(block.mlp(block.norm2(x)))


def video_swin_branches(block: nn.Module, context: dict) -> list[Branch]:
    return [
        Branch(block, partial(_video_attention_branch, block, context)),
        Branch(block, partial(_video_mlp_branch, block)),
    ]


def _video_stage_names(module: nn.Module) -> list[str]:
    return [
        name for name, child in module.named_children()
        if isinstance(child, nn.Sequential) and any(isinstance(b, VIDEO_BLOCK) for b in child)
    ]


def _video_stages(module: nn.Module, prefix: str) -> list[StageSpec]:
    specs = []
    for stage_name in _video_stage_names(module):
        stage = getattr(module, stage_name)
        name = f"{prefix}.{stage_name}" if prefix else stage_name
        for child_name, block in stage.named_children():
            path = f"{name}.{child_name}"
            if type(block) is not VIDEO_BLOCK:
                raise _unsupported(path, block)
            if type(block.attn) is not VIDEO_ATTENTION:
                raise _unsupported(path, block, f" with attention {_qualified(block.attn)}")
        specs.append(StageSpec(module, stage_name, dict(stage.named_children()), video_swin_branches, 0, name))
    _install_mask_sharing()
    return specs


# ------------------------------------------------------------------------------------------------------- family
def _matches(module: nn.Module) -> bool:
    return _is_timm_stage(module) or bool(_video_stage_names(module))


def _find_stages(module: nn.Module, prefix: str) -> list[StageSpec]:
    return _timm_stages(module, prefix) if _is_timm_stage(module) else _video_stages(module, prefix)


SWIN = register_family(
    Family(
        name="swin",
        supported=SUPPORTED,
        matches=_matches,
        find_stages=_find_stages,
        notes="patch merging stays ordinary; shifted-window masks are built once per stage forward and reused",
    )
)
