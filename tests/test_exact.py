"""Exact (fixed-point) reversible arithmetic: bitwise reconstruction and exact gradients at every alpha, beta."""

import copy

import pytest
import torch

import revtal
from revtal.reversible import nearest_dyadic, reversible_stages
from revtal.reversible.diagnostics import first_stage_reconstruction
from revtal.utils.memory import saved_bytes
from tests.helpers import grads, max_relative_gap, tiny_vit

POINTS = [(1.0, 1 / 8, 8), (1.0, 1 / 1024, 10), (0.3, 45 / 64, 8), (0.0, 1.0, 8)]


@pytest.mark.parametrize("alpha,beta,bits", POINTS)
def test_exact_reconstruction_is_bitwise(alpha, beta, bits):
    model = revtal.convert(tiny_vit(depth=4), "dr2net", alpha=alpha, beta=beta, backprop="exact", beta_bits=bits)
    check = first_stage_reconstruction(model, torch.randn(2, 3, 16, 16))
    assert check.bitwise and check.max_abs_error == 0.0


def test_float_reconstruction_fails_where_exact_does_not():
    ref = tiny_vit(depth=6)
    x = torch.randn(2, 3, 16, 16)
    float_check = first_stage_reconstruction(revtal.convert(copy.deepcopy(ref), "dr2net", alpha=1.0, beta=1 / 1024), x)
    assert not float_check.bitwise and float_check.relative_error > 1e-2
    exact_check = first_stage_reconstruction(
        revtal.convert(copy.deepcopy(ref), "dr2net", alpha=1.0, beta=1 / 1024, backprop="exact", beta_bits=10), x
    )
    assert exact_check.bitwise


@pytest.mark.parametrize("alpha,beta", [(1.0, 1 / 8), (0.3, 45 / 64), (0.0, 1.0)])
def test_exact_gradients_match_vanilla(alpha, beta):
    ref = tiny_vit(depth=4)
    x = torch.randn(2, 3, 16, 16)
    g = []
    for mode in ("exact", "vanilla"):
        model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=alpha, beta=beta, backprop=mode)
        (model(x) ** 2).sum().backward()
        g.append(grads(model))
    assert max_relative_gap(g[0], g[1]) < 1e-5


def test_exact_works_under_bf16_autocast():
    model = revtal.convert(tiny_vit(depth=3), "dr2net", alpha=1.0, beta=1 / 8, backprop="exact")
    stage = reversible_stages(model)[0]
    stage.verify_next_backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = (model(torch.randn(2, 3, 16, 16)) ** 2).sum()
    loss.backward()
    assert stage.last_check.bitwise
    assert all(torch.isfinite(t).all() for t in grads(model))


def test_saved_bytes_track_the_information_beta_forgets():
    x = torch.randn(2, 3, 16, 16)
    tokens = 2 * (4 + 1) * 32  # batch x (patches + cls) x dim elements per activation

    def measure(depth, beta):
        model = revtal.convert(tiny_vit(depth=depth), "dr2net", alpha=1.0, beta=beta, backprop="exact")
        return saved_bytes(lambda: (model(x) ** 2).sum(), model)

    # beta = 1/8 forgets 3 bits per element per branch: 12 more branches add 36 bits, 4.5 bytes per element, give or
    # take the byte the output streams' widths and the packing may move
    grown = measure(10, 1 / 8) - measure(4, 1 / 8)
    assert 4 * tokens <= grown <= 6 * tokens, grown / tokens
    # beta = 1 forgets nothing: what is stored (the output streams) does not grow with depth
    assert abs(measure(6, 1.0) - measure(3, 1.0)) <= tokens


def test_beta_is_rounded_to_a_dyadic_and_reported():
    assert (nearest_dyadic(0.1, 8).numerator, nearest_dyadic(0.1, 8).bits) == (13, 7)
    assert nearest_dyadic(45 / 64).value == 45 / 64
    model = revtal.convert(tiny_vit(depth=2), "dr2net", alpha=1.0, beta=0.1, backprop="exact")
    assert reversible_stages(model)[0].beta == 13 / 128
    assert revtal.set_coefficients(model, 0.7, 0.4) == (0.7, 102 / 256)
    with pytest.raises(ValueError, match="rounds to 0"):
        revtal.set_coefficients(model, 1.0, 1e-4)


def test_overflow_is_refused_clearly():
    # the fixed point follows each row's magnitude at the stage input, so what overflows is growth inside the stage
    model = revtal.convert(tiny_vit(depth=2), "dr2net", alpha=1.0, beta=1 / 8, backprop="exact", frac_bits=48)
    with torch.no_grad():
        model.blocks[0].mlp.fc2.weight.mul_(1e6)
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(OverflowError, match="lower frac_bits"):
        (model(x) ** 2).sum().backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_is_refused_with_the_autocast_remedy(dtype):
    model = revtal.convert(tiny_vit(depth=2), "dr2net", alpha=1.0, beta=0.125, backprop="exact").to(dtype)
    with pytest.raises(TypeError, match=r"model.half\(\).*autocast"):
        model(torch.randn(2, 3, 16, 16, dtype=dtype))
