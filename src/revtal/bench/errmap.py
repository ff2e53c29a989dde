"""The gradient error of memory-free backprop over the (α, β) plane, as in Dr²Net's figure.

For each point of an N×N grid — α from 0 to 1, β from ``beta_min`` to 1 (β = 0 is excluded: nothing can be
reconstructed there) — a fresh copy of the unconverted model is converted with ``method="dr2net"`` at that
(α, β), and its parameter gradients for one fixed random input are computed with the chosen memory-free backprop
and with vanilla backprop (:func:`revtal.reversible.diagnostics.compare_gradients`). Recorded per point:
``atol_level`` (Dr²Net's metric: the smallest atol with ``torch.allclose(G_mem, G_vanilla, rtol=1e-5, atol)``),
``max_rel_err`` and ``recon_rel_err``; a non-finite float reconstruction is recorded as ``inf``.

Dtypes: ``float32`` and ``float64`` run the model in that dtype; ``bfloat16`` keeps float32 parameters and
streams and runs the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (mixed precision, as training
would), so the branches compute in bfloat16 while the reversible streams stay float32 (exact: int64).

Outputs in ``--out``: ``errmap_<model>_<backprop>_<dtype>.csv``, ``.json``
(``{"model", "backprop", "dtype", "points": [{"alpha", "beta", "atol_level", "max_rel_err", "recon_rel_err"}]}``
plus provenance fields) and ``.png`` (heatmaps with a log colour scale, α on the x axis, β on the y axis).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from tqdm.auto import tqdm

from revtal.backbones import build
from revtal.reversible import convert, reversible_stages
from revtal.reversible.diagnostics import compare_gradients, random_projection_loss
from revtal.reversible.exact import storage_bits_per_branch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
MEMORY_FREE_MODES = ("reversible", "exact")
CSV_FIELDS = (
    "alpha", "beta", "beta_used", "atol_level", "max_rel_err", "recon_rel_err", "grad_scale", "failure",
    "bits_per_branch",
)


@dataclass
class ErrorPoint:
    alpha: float
    beta: float  # grid value
    beta_used: float  # after exact mode's dyadic rounding
    atol_level: float
    max_rel_err: float
    recon_rel_err: float
    grad_scale: float  # max |vanilla gradient| element, the yardstick of the absolute atol_level
    failure: str = ""
    bits_per_branch: float = 0.0  # what the backprop stores per element per branch: log2(1/β) exact, 0 float

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in CSV_FIELDS}


def grid_values(n: int, beta_min: float = 0.1) -> tuple[list[float], list[float]]:
    """α = n values evenly spaced on [0, 1]; β = n values evenly spaced on [beta_min, 1] (0 < beta_min < 1), so the
    grid holds Dr²Net's corners (α, β) = (1, beta_min) and (0, 1)."""
    if n < 2:
        raise ValueError(f"--grid must be at least 2, got {n}")
    if not 0.0 < beta_min < 1.0:
        raise ValueError(f"--beta-min must lie in (0, 1): beta = 0 cannot be reconstructed; got {beta_min}")
    alphas = [k / (n - 1) for k in range(n)]
    betas = [beta_min + (1.0 - beta_min) * k / (n - 1) for k in range(n)]
    betas[-1] = 1.0
    return alphas, betas


def gradient_error_map(
    reference: nn.Module,
    inputs: Tensor,
    alphas: Sequence[float],
    betas: Sequence[float],
    *,
    backprop: str = "reversible",
    autocast_dtype: torch.dtype | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[ErrorPoint]:
    """Measure every (α, β) of ``alphas × betas`` on a converted deep copy of the unconverted ``reference``."""
    if backprop not in MEMORY_FREE_MODES:
        raise ValueError(f"backprop must be one of {MEMORY_FREE_MODES}, got {backprop!r}")
    if reversible_stages(reference):
        raise ValueError("gradient_error_map needs the unconverted model: it converts a fresh copy at every point")
    if any(not b > 0 for b in betas):
        raise ValueError(f"every beta of the grid must be > 0 (beta = 0 cannot be reconstructed), got {list(betas)}")
    loss_fn = loss_fn or random_projection_loss(seed)
    points: list[ErrorPoint] = []
    grid = [(a, b) for b in betas for a in alphas]
    bar = tqdm(grid, desc=f"errmap {backprop}", unit="point", disable=not progress)
    for alpha, beta in bar:
        model = convert(copy.deepcopy(reference), "dr2net", alpha=alpha, beta=beta, backprop=backprop)
        result = compare_gradients(
            model, inputs, backprop=backprop, loss_fn=loss_fn, seed=seed, autocast_dtype=autocast_dtype
        )
        del model
        points.append(
            ErrorPoint(alpha, beta, result.beta, result.atol_level, result.max_rel_err, result.recon_rel_err,
                       result.grad_scale, result.failure.splitlines()[0] if result.failure else "",
                       storage_bits_per_branch(result.beta) if backprop == "exact" else 0.0)
        )
        bar.set_postfix(alpha=f"{alpha:.2f}", beta=f"{beta:.2f}", atol=f"{result.atol_level:.1e}")
    return points


# ------------------------------------------------------------------------------------------------------ models
def _tiny_vit(img_size: int) -> nn.Module:
    return VisionTransformer(img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=0)


def _timm_vit_s(img_size: int) -> nn.Module:
    return VisionTransformer(img_size=img_size, patch_size=16, embed_dim=384, depth=12, num_heads=6, num_classes=0)


# Models that need no backbone builder: image ViTs from timm (input (B, 3, H, W)). ``timm_vit_s`` has ViT-S's
# size (12 blocks, width 384); ``timm_vit_tiny`` is for tests.
LOCAL_IMAGE_MODELS: dict[str, Callable[[int], nn.Module]] = {"timm_vit_tiny": _tiny_vit, "timm_vit_s": _timm_vit_s}


def build_reference(
    name: str, *, num_frames: int, img_size: int, batch: int, seed: int, pretrained: Path | None = None
) -> tuple[nn.Module, Tensor]:
    """The unconverted model ``name`` (random init unless ``pretrained`` names a local checkpoint; eval mode) and
    one fixed standard-normal input for it: video backbones from :func:`revtal.backbones.build` get
    (B, 3, T, H, W), the local image ViTs (B, 3, H, W)."""
    torch.manual_seed(seed)
    if name in LOCAL_IMAGE_MODELS:
        if pretrained is not None:
            raise SystemExit(f"revtal errmap: --pretrained needs a revtal.backbones model, not the local {name!r}")
        model = LOCAL_IMAGE_MODELS[name](img_size)
        shape = (batch, 3, img_size, img_size)
    else:
        try:
            model = build(name, pretrained=pretrained, num_frames=num_frames, img_size=img_size)
        except (KeyError, ValueError) as err:
            raise SystemExit(f"revtal errmap: cannot build model {name!r}: {err}") from err
        shape = (batch, 3, num_frames, img_size, img_size)
    generator = torch.Generator().manual_seed(seed)
    return model.eval(), torch.randn(shape, generator=generator)


# ----------------------------------------------------------------------------------------------------- outputs
def write_outputs(points: list[ErrorPoint], out_dir: Path, meta: dict) -> dict[str, Path]:
    """CSV, JSON and heatmap PNG named after model, backprop and dtype; returns the paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"errmap_{meta['model']}_{meta['backprop']}_{meta['dtype']}"
    paths = {kind: out_dir / f"{stem}.{kind}" for kind in ("csv", "json", "png")}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for point in points:
            writer.writerow(point.as_dict())
    document = {**meta, "points": [_json_point(p) for p in points]}
    # inf has no JSON literal: written as the string "inf" so strict parsers accept the file
    paths["json"].write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    plot_heatmap(points, paths["png"], title=f"{meta['model']} · {meta['backprop']} backprop · {meta['dtype']}")
    return paths


def _json_value(v):
    return "inf" if isinstance(v, float) and math.isinf(v) else ("nan" if isinstance(v, float) and math.isnan(v) else v)


def _json_point(point: ErrorPoint) -> dict:
    return {k: _json_value(v) for k, v in point.as_dict().items()}


def plot_heatmap(points: list[ErrorPoint], path: Path, title: str = "") -> None:
    """Two log-scaled heatmaps over (α → x, β → y): the gradient atol level and the reconstruction error. Cells
    are annotated with their value; exact zeros and infinities are drawn in grey and labelled."""
    # matplotlib (and PIL below) load when a map is drawn, not with the module: a second of import; Agg set first
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen
    from matplotlib.colors import LogNorm

    alphas = sorted({p.alpha for p in points})
    betas = sorted({p.beta for p in points})
    fig, axes = plt.subplots(1, 2, figsize=(4.2 + 0.55 * len(alphas) * 2, 1.2 + 0.42 * len(betas)), squeeze=False)
    for ax, metric, label in (
        (axes[0, 0], "atol_level", "gradient error (allclose atol, rtol=1e-5)"),
        (axes[0, 1], "recon_rel_err", "relative reconstruction error"),
    ):
        grid = np.full((len(betas), len(alphas)), np.nan)
        for p in points:
            grid[betas.index(p.beta), alphas.index(p.alpha)] = getattr(p, metric)
        drawable = np.isfinite(grid) & (grid > 0)
        shown = np.ma.masked_where(~drawable, grid)
        low = grid[drawable].min() if drawable.any() else 1e-12
        high = grid[drawable].max() if drawable.any() else 1.0
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
        norm = LogNorm(vmin=low, vmax=max(high, low * 10))
        image = ax.imshow(shown, origin="lower", cmap=cmap, norm=norm, aspect="auto")
        for i in range(len(betas)):
            for j in range(len(alphas)):
                v = grid[i, j]
                text = "inf" if np.isinf(v) else ("0" if v == 0 else ("" if np.isnan(v) else f"{v:.0e}"))
                dark_cell = drawable[i, j] and norm(v) < 0.6  # viridis is dark at the low end
                ax.text(j, i, text, ha="center", va="center", fontsize=6.5, color="white" if dark_cell else "black")
        ax.set_xticks(range(len(alphas)), [f"{a:.2g}" for a in alphas], fontsize=7)
        ax.set_yticks(range(len(betas)), [f"{b:.2g}" for b in betas], fontsize=7)
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.set_title(label, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.05)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    plt.close(fig)
    # a 128-colour palette keeps the file ~4x smaller (small enough to commit beside the docs), no visible loss
    from PIL import Image

    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=128).save(path, optimize=True)


def error_map(model_name: str, out: Path, *, grid: int = 10, backprop: str = "reversible", dtype: str = "float32",
              pretrained: Path | None = None, beta_min: float = 0.1, num_frames: int = 4, img_size: int = 32,
              batch: int = 1, seed: int = 0, progress: bool = True) -> tuple[list[ErrorPoint], dict[str, Path], str]:
    """The map of ``model_name`` (a :func:`revtal.backbones.build` name or a :data:`LOCAL_IMAGE_MODELS` one) written
    to ``out``: returns the points, the files by kind and a summary of three corners."""
    alphas, betas = grid_values(grid, beta_min)
    model, inputs = build_reference(model_name, num_frames=num_frames, img_size=img_size, batch=batch, seed=seed,
                                    pretrained=pretrained)
    autocast_dtype = None
    if dtype == "float64":
        model, inputs = model.double(), inputs.double()
    elif dtype == "bfloat16":
        autocast_dtype = torch.bfloat16
    start = time.perf_counter()
    points = gradient_error_map(model, inputs, alphas, betas, backprop=backprop, autocast_dtype=autocast_dtype,
                                seed=seed, progress=progress)
    elapsed = time.perf_counter() - start
    meta = {
        "model": model_name,
        "backprop": backprop,
        "dtype": dtype,
        "grid": grid,
        "input_shape": list(inputs.shape),
        "seed": seed,
        "weights": str(pretrained) if pretrained else "random init",
        "loss": "sum_k mean(output_k * W_k), W_k ~ N(0, 1) fixed by the seed",
        "parameters": sum(p.numel() for p in model.parameters()),
        "elapsed_s": round(elapsed, 2),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    paths = write_outputs(points, out, meta)
    return points, paths, _summary(points, meta, beta_min, elapsed)


def _summary(points: list[ErrorPoint], meta: dict, beta_min: float, elapsed: float) -> str:
    def at(alpha: float, beta: float) -> ErrorPoint:
        return min(points, key=lambda p: (p.alpha - alpha) ** 2 + (p.beta - beta) ** 2)

    corners = [("(1, beta_min)", at(1.0, beta_min)), ("middle", at(0.5, 0.5)), ("(0, 1)", at(0.0, 1.0))]
    lines = [f"errmap {meta['model']} {meta['backprop']} {meta['dtype']}: {len(points)} points in {elapsed:.1f} s"]
    for label, p in corners:
        lines.append(
            f"  {label:>13} alpha={p.alpha:.3g} beta={p.beta_used:.3g}: atol_level={p.atol_level:.3g} "
            f"max_rel_err={p.max_rel_err:.3g} recon_rel_err={p.recon_rel_err:.3g}"
            + (f" stores {p.bits_per_branch:.2f} bits/element/branch" if meta["backprop"] == "exact" else "")
        )
    return "\n".join(lines)
