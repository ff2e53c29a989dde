"""scripts/gpu_check.sh's module off the GPU: it says so without CUDA, and its exact checks run on the CPU."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from revtal.bench import gpu_check
from revtal.commands.gpu_check import main as gpu_check_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_the_script_writes_no_cuda_and_succeeds(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": __import__("sys").executable},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["status"] == "no_cuda" and result["machine"]["device"] == "cuda"


def test_reconstruction_checks_run_on_the_cpu(tmp_path):
    out = tmp_path / "cpu.json"
    assert gpu_check_main(["--out", str(out), "--device", "cpu", "--models", "vit_tiny_video", "--frames", "4",
                           "--img-size", "32"]) == 0
    result = json.loads(out.read_text())
    records = result["reconstruction"]
    assert result["status"] == "ok" and "memory" not in result
    assert len(records) == len(gpu_check.POINTS) * 2  # points × (float32, bf16)
    assert all(r["bitwise"] and r["stages"] for r in records)
    assert records[0]["max_rel_err_vs_vanilla"] < 1e-5
    assert records[0]["bits_per_branch"] > 3.29  # log2(128/13) at the start point
    swin = gpu_check.reconstruction_checks("cpu", ["swin3d_t"], frames=4, img_size=32, points=[(1.0, 1 / 8)],
                                           progress=False)
    assert all(r["bitwise"] for r in swin) and swin[0]["max_rel_err_vs_vanilla"] < 1e-5
