"""revtal errmap and the gradient-comparison helpers: the allclose metric, the grid, the files written, and the
numbers behaving as the maths says (float error shrinks from (1, 0.1) to (0, 1); exact reconstruction is bitwise;
a blown-up float reconstruction is recorded as inf)."""

import csv
import json
import math

import pytest
import torch

from revtal.cli import main as revtal_main
from revtal.reversible.diagnostics import atol_level, compare_gradients, gradient_errors
from revtal.bench.errmap import build_reference, gradient_error_map, grid_values, write_outputs


def test_atol_level_is_the_smallest_allclose_atol():
    a = [torch.tensor([1.0, 2.0, -3.0]), torch.tensor([[0.5]])]
    b = [torch.tensor([1.0, 2.1, -3.0]), torch.tensor([[0.5]])]
    level = atol_level(a, b)
    assert level == pytest.approx(0.1 - 1e-5 * 2.1, rel=1e-5)  # |2 − 2.1| − rtol·2.1
    assert all(torch.allclose(x, y, rtol=1e-5, atol=level) for x, y in zip(a, b))
    assert not torch.allclose(a[0], b[0], rtol=1e-5, atol=level * 0.999)
    assert atol_level([torch.tensor([1.0])], [torch.tensor([1.0])]) == 0.0
    errors = gradient_errors(a, b)
    assert errors.atol_level == level and errors.reference_max_abs == 3.0
    assert errors.max_rel_err == pytest.approx(0.1 / math.sqrt(1 + 2.1**2 + 9))
    assert gradient_errors([torch.tensor([float("nan")])], [torch.tensor([1.0])])[:2] == (math.inf, math.inf)
    assert gradient_errors([torch.tensor([float("inf")])], [torch.tensor([1.0])])[:2] == (math.inf, math.inf)


def test_grid_holds_the_corners_and_excludes_beta_zero():
    alphas, betas = grid_values(3, beta_min=0.1)
    assert alphas == [0.0, 0.5, 1.0]
    assert betas == pytest.approx([0.1, 0.55, 1.0]) and betas[-1] == 1.0
    with pytest.raises(ValueError, match="beta-min"):
        grid_values(3, beta_min=0.0)
    with pytest.raises(ValueError, match="grid"):
        grid_values(1)


def test_cli_writes_csv_json_png_and_float_error_falls_towards_zero_one(tmp_path):
    code = revtal_main(["errmap", "--model", "timm_vit_tiny", "--grid", "3", "--img-size", "16",
                        "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    stem = tmp_path / "errmap_timm_vit_tiny_reversible_float32"
    document = json.loads(stem.with_suffix(".json").read_text())
    assert (document["model"], document["backprop"], document["dtype"]) == ("timm_vit_tiny", "reversible", "float32")
    points = document["points"]
    assert len(points) == 9
    assert {"alpha", "beta", "atol_level", "max_rel_err", "recon_rel_err"} <= set(points[0])
    assert min(p["beta"] for p in points) == pytest.approx(0.1)
    with stem.with_suffix(".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["atol_level"]) for r in rows] == [p["atol_level"] for p in points]
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    at = {(p["alpha"], round(p["beta"], 6)): p for p in points}
    start, rewired = at[(1.0, 0.1)], at[(0.0, 1.0)]
    for metric in ("atol_level", "max_rel_err", "recon_rel_err"):
        assert rewired[metric] < start[metric] / 10, metric
    assert 0 < rewired["recon_rel_err"] < 1e-5  # float32 rounding, not garbage


def test_exact_mode_reconstructs_bitwise_and_matches_vanilla():
    model, x = build_reference("timm_vit_tiny", num_frames=1, img_size=16, batch=1, seed=0)
    alphas, betas = grid_values(3)
    exact = gradient_error_map(model, x, alphas, betas, backprop="exact", progress=False)
    assert all(p.recon_rel_err == 0.0 for p in exact)
    assert all(p.max_rel_err < 1e-5 for p in exact)  # float32 noise of the two computations, nothing more
    assert [p.beta_used for p in exact[:3]] == [13 / 128] * 3  # 0.1 rounded to a dyadic with 8 bits
    float_start = gradient_error_map(model, x, [1.0], [0.1], backprop="reversible", progress=False)[0]
    assert exact[2].atol_level < float_start.atol_level / 100  # exact[2] is (α, β) = (1, 0.1)
    # in float64 the only difference left is the 2^-32 fixed-point grid of the exact streams
    exact64 = gradient_error_map(model.double(), x.double(), [1.0], [0.1], backprop="exact", progress=False)[0]
    assert exact64.recon_rel_err == 0.0 and exact64.max_rel_err < 1e-6


def test_non_finite_reconstruction_is_recorded_as_inf(tmp_path):
    model, x = build_reference("timm_vit_tiny", num_frames=1, img_size=16, batch=1, seed=0)
    points = gradient_error_map(model, x, [1.0], [1e-10, 1.0], backprop="reversible", progress=False)
    blown, fine = points
    assert blown.atol_level == math.inf and blown.max_rel_err == math.inf
    assert "non-finite gradient" in blown.failure and "beta=1e-10" in blown.failure
    assert math.isfinite(fine.atol_level) and fine.failure == ""
    assert 0 < blown.grad_scale < math.inf  # the vanilla reference is still measured

    paths = write_outputs(points, tmp_path, {"model": "m", "backprop": "reversible", "dtype": "float32"})
    document = json.loads(paths["json"].read_text())
    assert document["points"][0]["atol_level"] == "inf"
    assert paths["png"].stat().st_size > 0


def test_bfloat16_runs_under_autocast(tmp_path):
    code = revtal_main(["errmap", "--model", "timm_vit_tiny", "--grid", "2", "--img-size", "16", "--dtype",
                        "bfloat16", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    points = json.loads((tmp_path / "errmap_timm_vit_tiny_reversible_bfloat16.json").read_text())["points"]
    assert len(points) == 4 and all(isinstance(p["max_rel_err"], float) for p in points)


def test_compare_gradients_restores_modes_and_coefficients():
    import revtal

    model, x = build_reference("timm_vit_tiny", num_frames=1, img_size=16, batch=1, seed=0)
    revtal.convert(model, "dr2net", alpha=0.7, beta=0.3, backprop="reversible")
    result = compare_gradients(model, x, backprop="exact")
    assert result.beta == 77 / 256  # the dyadic β the exact run used
    stage = revtal.reversible_stages(model)[0]
    assert (stage.backprop, stage.alpha, stage.beta) == ("reversible", 0.7, 0.3)
    with pytest.raises(ValueError, match="unconverted"):
        gradient_error_map(model, x, [1.0], [0.5], progress=False)


def test_builder_backbone_and_unknown_name(tmp_path):
    code = revtal_main(["errmap", "--model", "vit_tiny_video", "--grid", "2", "--num-frames", "2", "--img-size", "32",
                        "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    document = json.loads((tmp_path / "errmap_vit_tiny_video_reversible_float32.json").read_text())
    assert document["input_shape"] == [1, 3, 2, 32, 32] and document["weights"] == "random init"
    assert len(document["points"]) == 4
    with pytest.raises(SystemExit, match="cannot build model 'no_such_net'"):
        revtal_main(["errmap", "--model", "no_such_net", "--out", str(tmp_path)])
