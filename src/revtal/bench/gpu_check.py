"""``python -m revtal.commands.gpu_check --out OUT.json`` (:func:`gpu_check`): exact backprop on CUDA, and each mode's CUDA peak.

Exact mode is bitwise only if every branch recomputes bitwise identically in backward; on CUDA that needs
deterministic algorithms (``torch.use_deterministic_algorithms(True)``, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set
before CUDA starts — ``scripts/gpu_check.sh`` does). This module

1. converts ViT-S and Video Swin-T (16×224², batch 1) to exact Dr²Net at several (α, β), in float32 and under bf16
   autocast, and checks that every stage reconstructs its input bitwise; it records the exact-vs-vanilla gradient
   error at the start point and, for information, whether reconstruction is still bitwise with deterministic
   algorithms off;
2. runs ``revtal bench memory --device cuda`` for the training modes at 16×224² (``torch.cuda.max_memory_allocated``
   per mode, one fresh process per configuration);

and writes one JSON (``status``: ``ok``, ``failed`` — a deterministic check was not bitwise — or ``no_cuda``).
Without CUDA it writes ``no_cuda`` and exits 0, so it can run anywhere; the checks themselves also run on the CPU
(``--device cpu``, used by the tests with a tiny model).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from revtal.backbones import build
from revtal.bench.runner import machine_info
from revtal.reversible.convert import convert
from revtal.reversible.diagnostics import gradient_errors
from revtal.reversible.stage import reversible_stages

POINTS = ((1.0, 13 / 128), (0.3, 179 / 256), (0.0, 1.0))
MODELS = ("vit_s_video", "swin3d_t")
MEMORY_MODES = ("conventional", "checkpoint", "re2", "dr2net:reversible", "dr2net:exact", "revlib", "memcnn")


def reconstruction_checks(
    device: str, models=MODELS, frames: int = 16, img_size: int = 224, points=POINTS, progress: bool = True
) -> list[dict]:
    """One record per (model, α, β, precision): every stage's reconstruction check, and at the first point in
    float32 the gradient error against vanilla backprop of the same coupled network."""
    records = []
    for name in models:
        torch.manual_seed(0)
        reference = build(name, num_frames=frames, img_size=img_size).to(device).train()
        video = torch.randn(1, 3, frames, img_size, img_size, device=device)
        for index, (alpha, beta) in enumerate(points):
            for precision in ("float32", "bf16"):
                start = time.perf_counter()
                model = convert(copy.deepcopy(reference), "dr2net", alpha=alpha, beta=beta, backprop="exact")
                stages = reversible_stages(model)
                grads = _backward(model, video, stages, precision, verify=True)
                record = {
                    "model": name, "alpha": alpha, "beta": stages[0].beta, "precision": precision,
                    "deterministic": torch.are_deterministic_algorithms_enabled(),
                    "bitwise": all(s.last_check is not None and s.last_check.bitwise for s in stages),
                    "stages": [
                        {"stage": s.stage_name, "bitwise": s.last_check.bitwise,
                         "max_abs_error": s.last_check.max_abs_error} for s in stages
                    ],
                    "bits_per_branch": stages[0].storage_bits_per_branch(),
                    "stored_bits_per_element": [s.exact_arithmetic.last_storage.bits_per_element for s in stages],
                }
                if index == 0 and precision == "float32":
                    vanilla = convert(copy.deepcopy(reference), "dr2net", alpha=alpha, beta=beta,
                                             backprop="vanilla")
                    errors = gradient_errors(grads, _backward(vanilla, video, [], precision, verify=False))
                    record["max_rel_err_vs_vanilla"] = errors.max_rel_err
                    if torch.are_deterministic_algorithms_enabled() and device.startswith("cuda"):
                        record["bitwise_without_deterministic_algorithms"] = _bitwise_nondeterministic(
                            model, video, stages, precision
                        )
                record["seconds"] = round(time.perf_counter() - start, 2)
                records.append(record)
                if progress:
                    print(f"{name} ({alpha:g}, {record['beta']:g}) {precision}: bitwise={record['bitwise']} "
                          f"stored {max(record['stored_bits_per_element'])} bits/element", flush=True)
                del model
    return records


def _backward(model, video, stages, precision: str, verify: bool):
    for stage in stages:
        if verify:
            stage.verify_next_backward(whole=True)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same drop-path masks in every run
    with torch.autocast(video.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(video).float()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.device)
    (out * weights).sum().backward()
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _bitwise_nondeterministic(model, video, stages, precision: str) -> bool:
    torch.use_deterministic_algorithms(False)
    try:
        _backward(model, video, stages, precision, verify=True)
        return all(s.last_check is not None and s.last_check.bitwise for s in stages)
    finally:
        torch.use_deterministic_algorithms(True)


def memory_records(frames: int, img_size: int, models=MODELS, modes=MEMORY_MODES, timeout: float = 300) -> dict:
    """``revtal bench memory --device cuda`` for ``modes`` (its JSON: machine, records, skipped)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "memory.json"
        cmd = [sys.executable, "-m", "revtal", "bench", "memory", "--device", "cuda", "--models", *models,
               "--frames", str(frames), "--img-sizes", str(img_size), "--modes", *modes, "--timeout", str(timeout),
               "--no-progress", "--json", str(out)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def gpu_check(out: str | Path, device: str = "cuda", models=MODELS, frames: int = 16, img_size: int = 224,
              skip_memory: bool = False) -> int:
    """Run the checks on ``device`` and write their JSON to ``out``; returns 1 if a deterministic exact check was not
    bitwise (0 without CUDA, status ``no_cuda``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine_info(device)}
    if device.startswith("cuda") and not torch.cuda.is_available():
        result.update(status="no_cuda", reason="torch.cuda.is_available() is False: nothing was checked")
        out.write_text(json.dumps(result, indent=2))
        print(f"no CUDA device: wrote {out} (status no_cuda)")
        return 0
    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # effective only if CUDA has not started yet
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    start = time.perf_counter()
    result["reconstruction"] = reconstruction_checks(device, models, frames, img_size)
    deterministic_ok = all(r["bitwise"] for r in result["reconstruction"])
    if not skip_memory and device.startswith("cuda"):
        result["memory"] = memory_records(frames, img_size, models)
    result["status"] = "ok" if deterministic_ok else "failed"
    result["seconds"] = round(time.perf_counter() - start, 1)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}: status {result['status']} in {result['seconds']} s")
    return 0 if deterministic_ok else 1
