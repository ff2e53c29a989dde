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


def squared_loss(model, x) -> torch.Tensor:
    return (model(x) ** 2).sum()


def assert_bitwise_same_network(reference, converted, x) -> None:
    """Outputs and every parameter gradient of ``converted`` equal those of ``reference`` bit for bit."""
    out_ref, out = reference(x), converted(x)
    assert torch.equal(out_ref, out)
    (out_ref ** 2).sum().backward()
    (out ** 2).sum().backward()
    for (name, a), b in zip(reference.named_parameters(), converted.parameters()):
        assert torch.equal(a.grad, b.grad), name


def gradients_per_mode(reference, x, modes=("reversible", "vanilla"), seed: int | None = None, **convert_kwargs):
    """Convert a copy of ``reference`` once per backprop mode, backpropagate the squared loss, and return
    ``[(parameter gradients, input gradient or None), ...]`` in the order of ``modes``."""
    import revtal

    results = []
    for mode in modes:
        model = revtal.convert(copy.deepcopy(reference), backprop=mode, **convert_kwargs)
        if x.requires_grad:
            x.grad = None
        if seed is not None:
            torch.manual_seed(seed)  # same dropout / drop-path masks in every mode
        squared_loss(model, x).backward()
        results.append((grads(model), x.grad.clone() if x.requires_grad else None))
    return results


def assert_reversible_matches_vanilla(reference, x, tolerance: float, seed: int | None = None, **convert_kwargs):
    (g_rev, gx_rev), (g_van, gx_van) = gradients_per_mode(reference, x, seed=seed, **convert_kwargs)
    assert len(g_rev) == len([p for p in reference.parameters() if p.requires_grad])
    assert max_relative_gap(g_rev, g_van) < tolerance
    if gx_rev is not None:
        assert max_relative_gap([gx_rev], [gx_van]) < tolerance


def live_peak_bytes(fn) -> int:
    """The peak, over ``fn()``, of the bytes of tensor storages created while it runs and still alive (real CPU
    tensors; parameters and inputs made before it are not counted)."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class _Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.current = self.peak = 0
            self.seen: set[int] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = id(storage)
                    if key not in self.seen:
                        self.seen.add(key)
                        self.current += storage.nbytes()
                        self.peak = max(self.peak, self.current)
                        weakref.finalize(storage, self._free, key, storage.nbytes())
            return out

        def _free(self, key, nbytes):
            self.seen.discard(key)
            self.current -= nbytes

    meter = _Live()
    with meter:
        fn()
    return meter.peak
