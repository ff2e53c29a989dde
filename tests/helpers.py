"""Small builders shared by the tests (tiny models only)."""

from __future__ import annotations

import copy

import torch
from timm.models.vision_transformer import VisionTransformer


def tiny_vit(depth: int = 4, dim: int = 32, heads: int = 4, img: int = 16, patch: int = 8, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, num_classes=3, **kw
    )


def grads(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def max_relative_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest per-tensor ‖a − b‖ / ‖b‖. Tensors whose reference gradient is round-off noise (‖b‖ below 1e-9 of the
    largest; e.g. a conv bias followed by BatchNorm) are measured against that floor instead."""
    assert len(a) == len(b) and len(a) > 0
    floor = 1e-9 * max(y.norm().item() for y in b)
    return max(((x - y).norm() / y.norm().clamp_min(max(floor, 1e-300))).item() for x, y in zip(a, b))


def fresh_copy(model):
    return copy.deepcopy(model)
