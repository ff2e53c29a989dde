"""revtal plan: the live-bytes meter, the simulated training steps and the CUDA allocator model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from revtal.bench.plan import (
    LiveBytes, cuda_block_size, cuda_reserved, plan_recipe, simulate_steps,
)
from revtal.engine.config import config_from_dict

MiB = 1 << 20


def test_live_bytes_counts_a_storage_once_for_its_views_and_in_place_results():
    with LiveBytes() as meter:
        x = torch.zeros(1000)  # 4000 bytes
        view = x[10:20].view(2, 5)
        x.add_(1)
        view.mul_(2)
        assert meter.current == 4000
        y = x * 2
        assert meter.current == 8000 and meter.peak == 8000
        del x, view
        assert meter.current == 4000  # the storage goes when its last view does
        del y
    assert meter.current == 0 and meter.peak == 8000


def test_live_bytes_peak_includes_the_inputs_live_while_an_output_is_made():
    with LiveBytes() as meter:
        a = torch.ones(256)
        b = (a + 1) * 3  # a + 1 is alive when the product is made
        del a
    assert meter.peak == 3 * 1024 and meter.current == 1024
    del b


def _mlp_step(fake: bool):
    with (FakeTensorMode() if fake else torch.enable_grad()):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(100, 200), nn.GELU(), nn.LayerNorm(200), nn.Linear(200, 10))
        optimizer = torch.optim.AdamW(model.parameters())
        return simulate_steps(model, optimizer, lambda: model(torch.randn(64, 100)).pow(2).mean(), steps=2)


def test_simulated_steps_on_fake_tensors_equal_the_real_steps_byte_for_byte_with_the_split():
    real, fake = _mlp_step(False), _mlp_step(True)
    assert fake == real
    params = (100 * 200 + 200 + 200 * 2 + 200 * 10 + 10) * 4
    assert real.split["params"] == params
    # AdamW's state: exp_avg and exp_avg_sq per parameter plus one float32 step counter per parameter tensor
    assert real.split["optimizer"] == 2 * params + 6 * 4
    assert real.peak_bytes == sum(real.split.values())


def test_cuda_block_size_rounds_to_512_bytes():
    assert [cuda_block_size(n) for n in (0, 1, 512, 513, 4000)] == [0, 512, 512, 1024, 4096]


def test_cuda_reserved_models_the_caching_allocator_pools_and_reuse():
    # small requests share one 2 MiB segment
    assert cuda_reserved([(0, 1000), (1, 1000), (2, 1000)]) == 2 * MiB
    # a 5 MiB request opens a 20 MiB large segment; a second one is split from its rest
    assert cuda_reserved([(0, 5 * MiB), (1, 5 * MiB)]) == 20 * MiB
    # 30 MiB is its own segment rounded to 2 MiB; freed, it is reused for 25 MiB without a new segment
    assert cuda_reserved([(0, 29 * MiB + 1), (0, -1), (1, 25 * MiB)]) == 30 * MiB
    # freed neighbours merge: two 6 MiB blocks freed serve a 12 MiB request from the same 20 MiB segment
    events = [(0, 6 * MiB), (1, 6 * MiB), (0, -1), (1, -1), (2, 12 * MiB)]
    assert cuda_reserved(events) == 20 * MiB


TINY = {
    "data": {"num_frames": 16, "img_size": 32, "batch_size": 1},
    "backbone": {"name": "vit_tiny_video", "options": {"patch_size": 16, "tubelet_size": 2, "depth": 4}},
    "localizer": {"options": {"embed_dim": 32, "head_dim": 32, "num_heads": 4, "window_size": 3,
                              "num_branch_blocks": 1, "regression_ranges": [[0, 4], [4, 10000]]}},
}


def test_two_simulated_steps_of_exact_mode_equal_the_real_cpu_steps_given_the_measured_stream_widths():
    config = config_from_dict(TINY)
    real = plan_recipe(config, "dr2net:exact", classes=3, fake=False, rules="cpu")
    simulated = plan_recipe(config, "dr2net:exact", classes=3, fake=True, rules="cpu",
                            exact_stream_bits=real.exact_stream_bits)
    assert real.exact_stream_bits and simulated == real
    assert real.split["grads"] > 0 and real.split["optimizer"] > 0 and real.split["activations"] > 0


def test_exact_mode_simulated_with_the_stated_worst_case_magnitudes_bounds_the_real_step():
    config = config_from_dict(TINY)
    real = plan_recipe(config, "dr2net:exact", steps=1, classes=3, fake=False, rules="cpu")
    worst = plan_recipe(config, "dr2net:exact", steps=1, classes=3, fake=True, rules="cpu")
    assert all(w[0] >= r[0] and w[1] >= r[1] for w, r in zip(worst.exact_stream_bits, real.exact_stream_bits))
    assert worst.peak_bytes >= real.peak_bytes


def test_a_converted_model_on_the_meta_device_runs_forward_and_backward():
    import revtal
    from revtal.backbones import build

    for method, backprop, coefficients in [("dr2net", "exact", {"alpha": 1.0, "beta": 0.125}),
                                           ("re2", "reversible", {}), ("original", "checkpoint", {})]:
        with torch.device("meta"):
            model = build("vit_tiny_video", num_frames=8, img_size=32, patch_size=16, tubelet_size=2)
            revtal.convert(model, method, backprop=backprop, **coefficients)
            model.train()
            out = model(torch.zeros(1, 3, 8, 32, 32))
            out.sum().backward()
        assert out.is_meta and out.shape == (1, 64, 4)
        assert all(p.grad is not None and p.grad.is_meta for p in model.parameters())


# ------------------------------------------------------------------------------------------ CUDA rules
def _torch_autocast_test_lists() -> dict[str, set[str]]:
    import ast
    import os

    path = os.path.join(os.path.dirname(torch.__file__), "testing", "_internal", "autocast_test_lists.py")
    if not os.path.exists(path):
        pytest.skip("this torch build ships no autocast test lists")
    lists: dict[str, set[str]] = {}
    for cls in (n for n in ast.parse(open(path).read()).body if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute) \
                    and isinstance(node.value, ast.List):
                names = {e.elts[0].value for e in node.value.elts
                         if isinstance(e, ast.Tuple) and isinstance(e.elts[0], ast.Constant)}
                lists[f"{cls.name}.{node.targets[0].attr}"] = {n.strip("_") if n.startswith("__") else n for n in names}
    return lists


def test_the_emulated_autocast_lists_are_the_installed_torchs():
    from revtal.bench import cuda_emulation as ce

    lists = _torch_autocast_test_lists()
    cuda = "AutocastTestLists."
    cuda_lower = set().union(*(lists[cuda + k] for k in ("torch_fp16", "nn_fp16", "linalg_fp16", "methods_fp16")))
    cuda_fp32 = set().union(*(lists[cuda + k] for k in ("torch_fp32", "nn_fp32", "methods_fp32")))
    assert cuda_lower == ce.CUDA_LOWER_PRECISION - {"scaled_dot_product_attention"}
    assert cuda_fp32 == ce.CUDA_FLOAT32
    assert lists[cuda + "torch_need_autocast_promote"] == ce.CUDA_PROMOTE
    cpu = "AutocastCPUTestLists."
    assert lists[cpu + "torch_16"] | lists[cpu + "nn_16"] == ce.CPU_LOWER_PRECISION - {"scaled_dot_product_attention"}
    assert lists[cpu + "torch_fp32"] | lists[cpu + "nn_fp32"] == ce.CPU_FLOAT32


def test_cuda_autocast_runs_norms_and_softmax_in_float32_and_leaves_pooling_in_bf16():
    import torch.nn.functional as F

    from revtal.bench.cuda_emulation import CudaAutocast

    with FakeTensorMode(), CudaAutocast(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(2, 8, 16)
        w = torch.randn(16, 16)
        h = F.linear(x, w)
        assert h.dtype == torch.bfloat16
        assert F.layer_norm(h, (16,)).dtype == torch.float32
        assert h.softmax(-1).dtype == torch.float32 and h.sum().dtype == torch.float32
        assert F.avg_pool3d(torch.randn(1, 2, 4, 4, 4).bfloat16(), 2).dtype == torch.bfloat16
    with FakeTensorMode(), torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast's own rules differ
        assert F.layer_norm(torch.randn(2, 16).bfloat16(), (16,)).dtype == torch.bfloat16


@pytest.mark.parametrize("affine", [torch.bfloat16, torch.float32, None])
def test_fake_normalisation_statistics_take_the_real_cpu_kernels_dtypes(affine):
    from revtal.bench.cuda_emulation import NormStatistics

    def norms():
        x = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16)
        w, b = (None, None) if affine is None else (torch.ones(8, dtype=affine), torch.zeros(8, dtype=affine))
        outputs = [torch.ops.aten.native_layer_norm(x, [4], None if w is None else w[:4], None if b is None else b[:4],
                                                    1e-5),
                   torch.ops.aten.native_group_norm(x, w, b, 2, 8, 16, 2, 1e-5)]
        if affine is not None:
            stats = torch.zeros(8, dtype=affine), torch.ones(8, dtype=affine)
            outputs.append(torch.ops.aten.native_batch_norm(x, w, b, *stats, True, 0.1, 1e-5))
        return [[(t.dtype, tuple(t.shape)) for t in out] for out in outputs]

    real = norms()
    with FakeTensorMode(), NormStatistics("cpu"):
        simulated = norms()
    assert simulated == real
    if affine == torch.float32:  # a bf16 input with float32 parameters: the statistics are float32
        assert all(out[1][0] == torch.float32 for out in real)
        with FakeTensorMode():  # which torch's fake kernels get wrong
            assert norms() != real


def test_cuda_attention_saves_the_logsumexp_not_the_attention_matrix():
    import torch.nn.functional as F

    from revtal.bench.cuda_emulation import CudaAutocast

    b, h, n, d = 1, 2, 1000, 64
    with FakeTensorMode():
        q, k, v = (torch.randn(b, h, n, d, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        with LiveBytes() as meter, CudaAutocast():
            out = F.scaled_dot_product_attention(q, k, v)
        assert meter.current == b * h * n * d * 2 + b * h * n * 4  # the output and the float32 log-sum-exp
        saved = out.grad_fn.saved_tensors
        assert sorted(t.numel() for t in saved) == sorted([q.numel()] * 4 + [b * h * n])
        with LiveBytes() as meter, CudaAutocast():
            q2 = torch.randn(b, h, n, d, dtype=torch.bfloat16, requires_grad=True)
            explicit = (q2 @ k.transpose(-2, -1)).softmax(-1) @ v
        assert meter.peak >= b * h * n * n * 4  # explicit attention: the N×N matrix, in float32 under CUDA rules
        del explicit


def test_plan_gpu_check_writes_no_cuda_without_a_gpu(tmp_path):
    import json

    from revtal.commands.plan_gpu_check import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: scripts/gpu_check.sh runs the real check")
    assert main(["--out", str(tmp_path / "check.json")]) == 0
    assert json.loads((tmp_path / "check.json").read_text()) == {"status": "no_cuda"}


def test_plan_command_reports_bad_input_in_one_line(capsys):
    from revtal.cli import main

    assert main(["plan", "configs/tiny_cpu_dr2net.yaml", "--modes", "nope"]) == 2
    assert "unknown plan mode 'nope'" in capsys.readouterr().err
    assert main(["plan", "configs/tiny_cpu_dr2net.yaml", "--gpu-gib", "0"]) == 2
    assert "--gpu-gib" in capsys.readouterr().err
    assert main(["plan", "configs/tiny_cpu_dr2net.yaml", "--steps", "0"]) == 2
    assert main(["plan", "configs/tiny_cpu_dr2net.yaml", "--set", "data.img_size=33", "--modes", "conventional",
                 "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "img_size=33" in err and err.startswith("revtal plan: error:")


def test_plan_command_prints_the_table_and_writes_json(tmp_path, capsys):
    import json

    from revtal.cli import main

    out = tmp_path / "plan.json"
    assert main(["plan", "configs/tiny_cpu_dr2net.yaml", "--set", "data.num_frames=8", "--modes", "frozen",
                 "--steps", "1", "--jobs", "1", "--gpu-gib", "11", "24", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["mode", "peak", "params"] and "frozen" in table
    result = json.loads(out.read_text())
    record = result["records"][0]
    assert record["mode"] == "frozen" and record["fits"] == {"11": True, "24": True}
    assert record["peak_bytes"] == record["params_bytes"] + record["grads_bytes"] + record["optimizer_bytes"] \
        + record["activation_bytes"]
    assert {"machine", "config"} <= set(result)


# ------------------------------------------------------------------------------------------ which modes apply
# the plan modes that do not apply to each recipe in configs/ (every other one does): in-block adapters need a video
# ViT; the adapter modes cut frames into clips themselves, so a snippets recipe (clips already) has none of them
NOT_APPLICABLE = {
    "anet_slowfast_r50_re2": {"st_adapter", "aim"},
    "anet_swin3d_t_dr2net": {"st_adapter", "aim"},
    "k400_swin3d_t_re2_repretrain": {"st_adapter", "aim"},
    "thumos_losa": set(),
    "thumos_re2tal": {"st_adapter", "aim"},
    "thumos_vitg_dr2net": {"losa", "unipt", "st_adapter", "aim"},
    "tiny_cpu_classification": {"losa", "unipt", "st_adapter", "aim"},  # its 8-frame clips are not 16-frame clips
    "tiny_cpu_dr2net": set(),
}


@pytest.mark.parametrize("recipe", sorted(NOT_APPLICABLE))
def test_every_plan_mode_is_checked_against_every_recipe_before_any_simulation(recipe):
    from revtal.bench.plan import PLAN_MODES, mode_not_applicable
    from revtal.engine.config import load_config

    config = load_config(f"configs/{recipe}.yaml")
    reasons = {mode: mode_not_applicable(config, mode) for mode in PLAN_MODES}
    assert {mode for mode, reason in reasons.items() if reason is not None} == NOT_APPLICABLE[recipe]
    assert all("\n" not in reason for reason in reasons.values() if reason is not None)


def test_the_recipes_in_configs_are_the_ones_whose_modes_are_checked():
    from pathlib import Path

    assert {p.stem for p in Path("configs").glob("*.yaml")} == set(NOT_APPLICABLE)


def test_docs_scale_run_sh_has_a_recipe_row_for_every_recipe_in_configs():
    import re
    from pathlib import Path

    script = Path("docs/scale/run.sh").read_text()
    runs = set(re.search(r"ALL=\((.*?)\)", script, re.S).group(1).split())
    assert {f"recipe_{p.stem}" for p in Path("configs").glob("*.yaml")} <= runs


SWIN_TINY = ["configs/tiny_cpu_dr2net.yaml", "--set", "backbone.name=swin3d_t", "--set", "backbone.options={}",
             "--set", "data.num_frames=8", "--set", "data.batch_size=1", "--steps", "1", "--jobs", "1"]


def test_plan_skips_the_default_modes_that_do_not_apply_and_says_why(tmp_path, capsys, monkeypatch):
    import json

    from revtal.bench import plan as plan_module
    from revtal.cli import main

    # the default list, cut to one mode that applies to Video Swin and one that does not (the rest take minutes)
    monkeypatch.setattr(plan_module, "PLAN_MODES", {m: plan_module.PLAN_MODES[m] for m in ("frozen", "st_adapter")})
    out = tmp_path / "plan.json"
    assert main(["plan", *SWIN_TINY, "--json", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    skipped_row = next(line for line in table if line.startswith("st_adapter"))
    assert "not applicable: " in skipped_row and "video ViT" in skipped_row
    records = json.loads(out.read_text())["records"]
    assert [r["mode"] for r in records] == ["frozen", "st_adapter"]
    assert records[0]["peak_bytes"] > 0 and set(records[1]) == {"mode", "skipped"}
    assert "video ViT" in records[1]["skipped"]


def test_plan_refuses_a_mode_asked_for_by_name_that_does_not_apply_before_simulating(capsys, monkeypatch):
    from revtal.bench import plan as plan_module
    from revtal.cli import main

    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated before the modes were checked")

    monkeypatch.setattr(plan_module, "_plan_mode", no_simulation)
    assert main(["plan", *SWIN_TINY, "--modes", "frozen", "aim"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("revtal plan: error: mode aim does not apply")
    assert "swin3d_t" in err[0]


def test_plan_plans_a_classification_recipe_with_its_own_classes(tmp_path, capsys):
    import json

    from revtal.cli import main

    out = tmp_path / "plan.json"
    assert main(["plan", "configs/tiny_cpu_classification.yaml", "--modes", "conventional", "--steps", "1",
                 "--jobs", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["classes"] == 4  # the recipe's synthetic clips
    record = result["records"][0]
    # the classifier: the ViT's parameters and a 4-class head, all trained, so the gradients are the parameters' size
    assert record["mode"] == "conventional" and record["peak_bytes"] > record["params_bytes"] > 0
    capsys.readouterr()
    # Kinetics' classes are in its clip lists, which plan does not read
    assert main(["plan", "configs/k400_swin3d_t_re2_repretrain.yaml", "--modes", "re2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --classes N" in err[0]
