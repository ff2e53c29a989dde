"""CoefficientSchedule: values per policy and order at given steps (hand-computed), monotonicity, the end point,
presets, application to a model, checkpoint round trip / resume, and the measured ``auto`` end point."""

import io
import math

import pytest
import torch

import revtal
from revtal.reversible import CoefficientSchedule, nearest_dyadic
from tests.helpers import tiny_vit


def test_tad_preset_linear_values_at_epochs():
    # η = 3 epochs, τ = 10: p = 3·⌊e/3⌋/10 before epoch 10, 1 from epoch 10 on
    s = CoefficientSchedule.preset("tad")
    expected = {
        0: (1.0, 0.1), 2: (1.0, 0.1),
        3: (0.7 * 1.0 + 0.3 * 0.3, 0.7 * 0.1 + 0.3 * 0.7),  # p = 0.3 → (0.79, 0.28)
        8: (0.4 * 1.0 + 0.6 * 0.3, 0.4 * 0.1 + 0.6 * 0.7),  # p = 0.6 → (0.58, 0.46)
        9: (0.1 * 1.0 + 0.9 * 0.3, 0.1 * 0.1 + 0.9 * 0.7),  # p = 0.9 → (0.37, 0.64)
        10: (0.3, 0.7), 19: (0.3, 0.7),
    }
    for epoch, (alpha, beta) in expected.items():
        got = s.value_at(epoch)
        assert got == pytest.approx((alpha, beta), abs=1e-12), epoch
    assert s.value_at(10) == (0.3, 0.7)  # the end point exactly, not approximately
    assert s.value_at(0) == (1.0, 0.1)


def test_iteration_unit_counts_global_iterations():
    # recognition recipe: η = 2 iterations, τ = 5 epochs; 4 iterations per epoch → the end at iteration 20
    s = CoefficientSchedule.preset("recognition", iters_per_epoch=4)
    assert s.progress(0, 0) == 0.0 and s.progress(0, 1) == 0.0
    assert s.progress(0, 3) == pytest.approx(2 / 20)  # global 3 → quantised to 2
    assert s.progress(1, 1) == pytest.approx(4 / 20)  # global 5 → 4
    assert s.progress(4, 3) == pytest.approx(18 / 20)  # global 19 → 18
    assert s.progress(5, 0) == 1.0
    assert s.value_at(0, 3) == pytest.approx((0.9 + 0.1 * 0.3, 0.9 * 0.1 + 0.1 * 0.7))
    with pytest.raises(ValueError, match="within an epoch of 4"):
        s.value_at(0, 4)


def test_policy_shapes_match_their_definitions():
    lin = CoefficientSchedule(policy="linear")
    assert lin.shape(0.37) == 0.37
    # exponential with k = ln 4: w(1/2) = (4^{1/2} − 1)/(4 − 1) = 1/3
    exp = CoefficientSchedule(policy="exponential", curvature=math.log(4.0))
    assert exp.shape(0.5) == pytest.approx(1 / 3, rel=1e-12)
    # logarithmic with k = 3: w(1/3) = ln 2 / ln 4 = 1/2
    log = CoefficientSchedule(policy="logarithmic", curvature=3.0)
    assert log.shape(1 / 3) == pytest.approx(0.5, rel=1e-12)
    grid = [k / 50 for k in range(51)]
    for s in (CoefficientSchedule(policy="exponential"), CoefficientSchedule(policy="logarithmic")):
        w = [s.shape(p) for p in grid]
        assert w[0] == 0.0 and w[-1] == 1.0
        assert all(b > a for a, b in zip(w, w[1:]))  # strictly increasing
    assert all(CoefficientSchedule(policy="exponential").shape(p) < p for p in grid[1:-1])  # slow start
    assert all(CoefficientSchedule(policy="logarithmic").shape(p) > p for p in grid[1:-1])  # fast start


def test_exponential_policy_values_at_epochs():
    # τ = 2 epochs, η = 1: epoch 1 is p = 1/2; with k = ln 4 the weight is 1/3
    s = CoefficientSchedule(policy="exponential", curvature=math.log(4.0), every=1, end_epoch=2)
    assert s.value_at(1) == pytest.approx((2 / 3 * 1.0 + 1 / 3 * 0.3, 2 / 3 * 0.1 + 1 / 3 * 0.7))


def test_orders_move_one_coefficient_at_a_time():
    # τ = 4 epochs, η = 1 → p = epoch / 4
    a_first = CoefficientSchedule(order="alpha_first", every=1, end_epoch=4)
    assert a_first.value_at(1) == pytest.approx((0.65, 0.1))  # p = 1/4: α halfway, β not yet
    assert a_first.value_at(2) == pytest.approx((0.3, 0.1))  # p = 1/2: α done
    assert a_first.value_at(3) == pytest.approx((0.3, 0.4))  # p = 3/4: β halfway
    b_first = CoefficientSchedule(order="beta_first", every=1, end_epoch=4)
    assert b_first.value_at(1) == pytest.approx((1.0, 0.4))
    assert b_first.value_at(2) == pytest.approx((1.0, 0.7))
    assert b_first.value_at(3) == pytest.approx((0.65, 0.7))
    simultaneous = CoefficientSchedule(every=1, end_epoch=4)
    assert simultaneous.value_at(2) == pytest.approx((0.65, 0.4))


@pytest.mark.parametrize("policy", ["linear", "exponential", "logarithmic"])
@pytest.mark.parametrize("order", ["simultaneous", "alpha_first", "beta_first"])
def test_monotone_piecewise_constant_and_fixed_after_end(policy, order):
    s = CoefficientSchedule(policy=policy, order=order, every=3, unit="iteration", end_epoch=2, iters_per_epoch=5)
    steps = [(e, i) for e in range(4) for i in range(5)]
    values = [s.value_at(e, i) for e, i in steps]
    for (a0, b0), (a1, b1) in zip(values, values[1:]):
        assert a1 <= a0 and b1 >= b0
    for k, ((e, i), v) in enumerate(zip(steps, values)):
        g = e * 5 + i
        if k and g % 3 != 0 and g < 10:
            assert v == values[k - 1], f"changed off an update boundary at global iteration {g}"
        if g >= 10:
            assert v == (0.3, 0.7)
    assert values[0] == (1.0, 0.1)


def test_apply_sets_every_stage_and_reports_rounded_beta():
    model = revtal.convert(tiny_vit(depth=2), "dr2net", backprop="exact")
    s = CoefficientSchedule(every=1, end_epoch=10)
    alpha, beta_used = s.apply(model, 3)
    want_alpha, want_beta = s.value_at(3)  # (0.79, 0.28)
    assert alpha == pytest.approx(want_alpha)
    assert beta_used == nearest_dyadic(want_beta, 8).value != want_beta
    assert all(st.alpha == alpha and st.beta == beta_used for st in revtal.reversible_stages(model))
    assert s.last_applied == {"alpha": alpha, "beta": beta_used, "epoch": 3, "iteration": 0}


def test_state_round_trip_and_resume_continue_exactly():
    config = dict(policy="logarithmic", order="beta_first", every=2, unit="iteration", end_epoch=3,
                  iters_per_epoch=7, alpha_end=0.2, beta_end=0.9)
    steps = [(e, i) for e in range(4) for i in range(7)]
    uninterrupted = [CoefficientSchedule(**config).value_at(e, i) for e, i in steps]

    first = CoefficientSchedule(**config)
    before = [first.value_at(e, i) for e, i in steps[:10]]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = CoefficientSchedule()  # defaults: the checkpoint's configuration must win
    with pytest.warns(UserWarning, match="differs"):
        resumed.load_state_dict(torch.load(buffer, weights_only=False))
    after = [resumed.value_at(e, i) for e, i in steps[10:]]
    assert before + after == uninterrupted
    with pytest.raises(ValueError, match="config"):
        resumed.load_state_dict({"alpha": 1})


def test_invalid_configuration_is_named():
    with pytest.raises(ValueError, match="policy"):
        CoefficientSchedule(policy="cosine")
    with pytest.raises(ValueError, match="iters_per_epoch"):
        CoefficientSchedule(unit="iteration")
    with pytest.raises(ValueError, match="beta_end"):
        CoefficientSchedule(beta_end=1.5)
    with pytest.raises(ValueError, match="point_cloud"):
        CoefficientSchedule.preset("pointcloud")


def test_auto_end_is_the_first_path_point_within_tolerance():
    model = revtal.convert(tiny_vit(depth=2, img=16, patch=8).eval(), "dr2net", backprop="reversible")
    x = torch.randn(1, 3, 16, 16)
    s = CoefficientSchedule(alpha_end=0.0, beta_end=1.0, end="auto", tolerance=1e-6, every=1, end_epoch=4)
    with pytest.raises(RuntimeError, match="calibrate"):
        s.value_at(0)
    report = s.calibrate(model, x, points=6)
    levels = [m["atol_level"] for m in report.measured]
    assert levels[0] > 1e-6, "precondition: the start point (1, 0.1) must not meet the tolerance"
    assert report.met and levels[-1] <= 1e-6 and all(v > 1e-6 for v in levels[:-1])
    path = s.path_points(6)
    assert (report.alpha, report.beta) == path[len(levels) - 1]
    assert s.value_at(4) == (report.alpha, report.beta)  # reached at τ
    assert s.value_at(0) == (1.0, 0.1)
    # the model itself is untouched by the measurement
    assert all(st.alpha == 1.0 and st.beta == 0.1 for st in revtal.reversible_stages(model))
    restored = CoefficientSchedule(alpha_end=0.0, beta_end=1.0, end="auto", tolerance=1e-6, every=1, end_epoch=4)
    restored.load_state_dict(s.state_dict())
    assert restored.value_at(4) == s.value_at(4) and restored.report.measured == report.measured

    unreachable = CoefficientSchedule(alpha_end=0.0, beta_end=1.0, end="auto", tolerance=1e-30)
    with pytest.warns(RuntimeWarning, match="no point met"):
        far = unreachable.calibrate(model, x, points=3)
    assert not far.met and (far.alpha, far.beta) == (0.0, 1.0) and len(far.measured) == 3
