"""Verify the reversible engine on a tiny ViT and print what was checked.

Every line is a measurement taken now, on this machine; the command fails (exit 1) if any check fails.
"""

from __future__ import annotations

import copy
import time

import torch
from timm.models.vision_transformer import VisionTransformer

from revtal.reversible import convert
from revtal.reversible.diagnostics import first_stage_reconstruction
from revtal.utils.memory import saved_bytes


def _vit(depth: int, seed: int, dtype=torch.float32) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=depth, num_heads=4, num_classes=4)
    return model.to(dtype)


def _grads(model, x) -> list[torch.Tensor]:
    (model(x) ** 2).sum().backward()
    return [p.grad for p in model.parameters()]


def _gap(a, b) -> float:
    return max(((u - v).norm() / v.norm().clamp_min(1e-30)).item() for u, v in zip(a, b))


def selfcheck(depth: int = 6, seed: int = 0) -> int:
    """Run every check on a tiny ViT of ``depth`` blocks, print one line per check; returns 1 if any failed."""
    rows: list[tuple[str, str, bool]] = []
    x32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    x64 = x32.double()
    start = time.perf_counter()

    ref = _vit(depth, seed)
    original = convert(copy.deepcopy(ref), "original")
    same = torch.equal(ref(x32), original(x32))
    rows.append(("(alpha=1, beta=0) output == pretrained ViT, bitwise float32", str(same), same))

    ref64 = _vit(depth, seed, torch.float64)
    for alpha, beta in [(0.0, 1.0), (0.5, 0.5)]:
        g_rev = _grads(convert(copy.deepcopy(ref64), "dr2net", alpha=alpha, beta=beta), x64)
        g_van = _grads(convert(copy.deepcopy(ref64), "dr2net", alpha=alpha, beta=beta, backprop="vanilla"), x64)
        gap = _gap(g_rev, g_van)
        rows.append((f"reversible vs vanilla grads, float64, ({alpha}, {beta}): max rel gap", f"{gap:.2e}", gap < 1e-10))

    for alpha, beta in [(1.0, 1 / 8), (1.0, 1 / 64)]:
        f_check = first_stage_reconstruction(convert(copy.deepcopy(ref), "dr2net", alpha=alpha, beta=beta), x32)
        e_check = first_stage_reconstruction(
            convert(copy.deepcopy(ref), "dr2net", alpha=alpha, beta=beta, backprop="exact"), x32
        )
        rows.append((f"float reconstruction rel error at ({alpha}, {beta:g})", f"{f_check.relative_error:.2e}", True))
        rows.append((f"exact reconstruction at ({alpha}, {beta:g}) bitwise", str(e_check.bitwise), e_check.bitwise))

    sizes = {}
    for d in (depth, 2 * depth):
        model = convert(_vit(d, seed), "dr2net", alpha=0.5, beta=0.5)
        sizes[d] = saved_bytes(lambda: (model(x32) ** 2).sum(), model)
    conventional = _vit(depth, seed)
    conv_bytes = saved_bytes(lambda: (conventional(x32) ** 2).sum(), conventional)
    constant = abs(sizes[2 * depth] - sizes[depth]) <= 0.05 * sizes[depth]
    rows.append((f"bytes saved for backward, depth {depth} vs {2 * depth}", f"{sizes[depth]} vs {sizes[2 * depth]}", constant))
    ratio = sizes[depth] / conv_bytes
    rows.append((f"bytes saved, reversible / conventional at depth {depth}", f"{ratio:.3f}", ratio < 0.2))

    width = max(len(r[0]) for r in rows)
    print(f"revtal selfcheck — tiny ViT (depth {depth}, dim 64), torch {torch.__version__}")
    for name, value, ok in rows:
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<{width}}  {value}")
    failed = sum(not ok for _, _, ok in rows)
    print(f"{len(rows) - failed} passed, {failed} failed in {time.perf_counter() - start:.1f}s")
    return 1 if failed else 0
