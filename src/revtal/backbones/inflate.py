"""Image → video inflation of a ViT (Dr²Net, appendix C.1): start a video ViT from an image ViT checkpoint.

Given a timm image ViT state dict:

* **patch embedding** — the 2-D kernel W (D, C, p, p) becomes a tubelet kernel (D, C, τ, p, p) with every temporal
  slice W / τ. On a clip whose τ frames are identical the tubelet token therefore equals the image patch token:
  Σ_t (W/τ)·frame = W·frame.
* **position embedding** — the spatial grid of the image embedding is resized to the video's H'×W' grid by bicubic
  interpolation (skipped when the grids agree), then *replicated* over the T' temporal positions: no temporal
  embedding is added, so at initialisation time is only told apart by content. A video of identical frames then
  gives, at every time step, exactly the image ViT's tokens — joint attention over T' identical copies of each key
  is the attention over one copy — which the tests check.
* **class / register tokens** are dropped with their position embeddings: the video ViT (VideoMAE layout) has no
  prefix tokens and pools by mean. The image classification head is dropped too.
* transformer blocks and the final norm(s) are copied unchanged; the pooling layout follows the checkpoint: an
  image ViT with ``fc_norm`` (global average pooling) gives ``use_mean_pooling=True``, one with a per-token ``norm``
  gives ``use_mean_pooling=False``.

The inflated model uses a *learned* position embedding (the image one, resized), so it is finetuned with the rest.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from revtal.backbones.weights import StateDict, drop_matching, load_checked, read_state_dict, select_prefixed
from revtal.backbones.video_vit import VideoViT, infer_layout

IMAGE_PREFIXES = ("module.", "backbone.")
IMAGE_DROPPED = (r"cls_token$", r"reg_token$", r"head\.", r"head_drop\.")


def inflate_patch_kernel(weight_2d: Tensor, tubelet_size: int) -> Tensor:
    """(D, C, p, p) → (D, C, τ, p, p), each temporal slice weight / τ."""
    if weight_2d.ndim != 4:
        raise ValueError(
            f"patch_embed.proj.weight of an image ViT must be 4-D (D, C, p, p), got {tuple(weight_2d.shape)}"
        )
    return weight_2d.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size


def inflate_pos_embed(
    pos_embed: Tensor,
    *,
    num_prefix_tokens: int,
    image_grid: tuple[int, int],
    video_grid: tuple[int, int, int],
    interpolation: str = "bicubic",
) -> Tensor:
    """(1, prefix + h·w, D) image embedding → (1, T'·H'·W', D) video embedding, time-major.

    Space: resized from (h, w) to (H', W') by ``interpolation`` (no-op when equal). Time: replicated T' times."""
    h, w = image_grid
    t_out, h_out, w_out = video_grid
    if pos_embed.shape[1] != num_prefix_tokens + h * w:
        raise ValueError(
            f"pos_embed has {pos_embed.shape[1]} positions, expected {num_prefix_tokens} prefix + {h}×{w} grid"
        )
    dim = pos_embed.shape[-1]
    spatial = pos_embed[:, num_prefix_tokens:].reshape(1, h, w, dim)
    if (h, w) != (h_out, w_out):
        spatial = F.interpolate(
            spatial.permute(0, 3, 1, 2), size=(h_out, w_out), mode=interpolation, align_corners=False
        ).permute(0, 2, 3, 1)
    spatial = spatial.reshape(1, 1, h_out * w_out, dim)
    return spatial.expand(1, t_out, h_out * w_out, dim).reshape(1, t_out * h_out * w_out, dim).clone()


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


def image_pos_layout(state_dict: StateDict, image_grid: tuple[int, int] | None = None) -> tuple[int, tuple[int, int]]:
    """(number of prefix positions inside ``pos_embed``, image patch grid) of a timm image ViT state dict.

    Prefix tokens are the class token and register tokens; timm's ``no_embed_class`` models keep no position for
    them. Without ``image_grid`` the grid is assumed square."""
    n_pos = state_dict["pos_embed"].shape[1]
    n_prefix = sum(state_dict[k].shape[1] for k in ("cls_token", "reg_token") if k in state_dict)
    if image_grid is not None:
        in_pos = n_pos - image_grid[0] * image_grid[1]
        if in_pos not in (0, n_prefix):
            raise ValueError(
                f"pos_embed has {n_pos} positions: does not fit a {image_grid} grid with 0 or {n_prefix} prefix tokens"
            )
        return in_pos, tuple(image_grid)
    for in_pos in (n_prefix, 0):
        side = _square_side(n_pos - in_pos)
        if side is not None:
            return in_pos, (side, side)
    raise ValueError(
        f"cannot infer the image patch grid from pos_embed with {n_pos} positions ({n_prefix} prefix tokens); "
        "pass image_grid=(h, w)"
    )


def inflate_state_dict(
    image_state_dict: StateDict,
    *,
    num_frames: int,
    img_size: int,
    tubelet_size: int = 2,
    image_grid: tuple[int, int] | None = None,
    interpolation: str = "bicubic",
) -> tuple[StateDict, list[str]]:
    """A timm image ViT state dict → a :class:`VideoViT` state dict (learned position embedding); returns the
    inflated state dict and the keys dropped (prefix tokens, head)."""
    sd, dropped = select_prefixed(dict(image_state_dict), IMAGE_PREFIXES)
    for key in ("patch_embed.proj.weight", "pos_embed"):
        if key not in sd:
            raise ValueError(f"image ViT checkpoint has no {key!r}: not a timm VisionTransformer state dict")
    in_pos, grid = image_pos_layout(sd, image_grid)
    patch = sd["patch_embed.proj.weight"].shape[-1]
    if num_frames % tubelet_size or img_size % patch:
        raise ValueError(
            f"num_frames={num_frames} must be a multiple of tubelet_size={tubelet_size} and img_size={img_size} a "
            f"multiple of the image ViT's patch size {patch}"
        )
    video_grid = (num_frames // tubelet_size, img_size // patch, img_size // patch)
    sd["patch_embed.proj.weight"] = inflate_patch_kernel(sd["patch_embed.proj.weight"], tubelet_size)
    sd["pos_embed"] = inflate_pos_embed(
        sd["pos_embed"], num_prefix_tokens=in_pos, image_grid=grid, video_grid=video_grid, interpolation=interpolation
    )
    sd, dropped_tokens = drop_matching(sd, IMAGE_DROPPED)
    return sd, dropped + dropped_tokens


def video_vit_options_from_image(state_dict: StateDict) -> dict[str, object]:
    """The :class:`VideoViT` constructor options a timm image ViT state dict determines (not ``num_heads``)."""
    sd, _ = select_prefixed(dict(state_dict), IMAGE_PREFIXES)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    weight = sd["patch_embed.proj.weight"]
    dim = weight.shape[0]
    options: dict[str, object] = dict(
        embed_dim=dim,
        depth=depth,
        patch_size=weight.shape[-1],
        in_chans=weight.shape[1],
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
    )
    options.update(infer_layout(sd))
    options["pos_embed"] = "learned"  # the image embedding, inflated
    return options


def inflate_image_vit(
    image: nn.Module | StateDict | str | Path,
    *,
    num_frames: int,
    img_size: int | None = None,
    tubelet_size: int = 2,
    num_heads: int | None = None,
    image_grid: tuple[int, int] | None = None,
    strict: bool = True,
    **video_vit_kwargs,
) -> VideoViT:
    """Build a :class:`VideoViT` initialised from an image ViT: a timm ``VisionTransformer`` instance, its state
    dict, or a local checkpoint file. With a state dict or file ``num_heads`` (and ``img_size``) must be given."""
    source = "<state dict>"
    if isinstance(image, nn.Module):
        state_dict = image.state_dict()
        num_heads = num_heads or image.blocks[0].attn.num_heads
        img_size = img_size or image.patch_embed.img_size[0]
        image_grid = image_grid or tuple(image.patch_embed.grid_size)
        video_vit_kwargs.setdefault("norm_eps", image.blocks[0].norm1.eps)
    elif isinstance(image, dict):
        state_dict = image
    else:
        source, state_dict = str(image), read_state_dict(image)
    if num_heads is None or img_size is None:
        raise ValueError("inflating from a state dict needs num_heads and img_size (a checkpoint does not store them)")
    options = video_vit_options_from_image(state_dict)
    options.update(video_vit_kwargs)
    model = VideoViT(
        num_frames=num_frames, img_size=img_size, tubelet_size=tubelet_size, num_heads=num_heads, **options
    )
    video_sd, dropped = inflate_state_dict(
        state_dict, num_frames=num_frames, img_size=img_size, tubelet_size=tubelet_size, image_grid=image_grid
    )
    load_checked(model, video_sd, strict=strict, source=source, dropped=dropped)
    return model


__all__ = [
    "inflate_image_vit", "inflate_patch_kernel", "inflate_pos_embed", "inflate_state_dict", "image_pos_layout",
    "video_vit_options_from_image",
]
