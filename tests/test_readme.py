"""The README's API example runs as printed: extracted from README.md and executed, with a randomly initialised
ViT-S saved as the local checkpoint it loads."""

import re
from pathlib import Path

import timm
import torch

import revtal

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_api_example_runs(tmp_path, monkeypatch):
    (snippet,) = readme_python_blocks()
    assert len(snippet.strip().splitlines()) <= 10
    torch.manual_seed(0)
    weights = timm.create_model("vit_small_patch16_224", pretrained=False).state_dict()
    monkeypatch.chdir(tmp_path)
    torch.save(weights, "vit_s.pth")
    namespace: dict = {}
    exec(compile(snippet, str(README), "exec"), namespace)  # noqa: S102 — the README's own example
    model = namespace["model"]
    stages = revtal.reversible_stages(model)
    assert stages and all(s.backprop == "exact" for s in stages)
    assert (stages[0].alpha, stages[0].beta) == (0.3, 179 / 256)  # β 0.7 in use as its nearest dyadic
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.state_dict().keys() == weights.keys()
