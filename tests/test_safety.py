"""ReconstructionMonitor: it switches a stage whose float reconstruction fails (α=1, β=0.01) to the fallback, stays
quiet where reconstruction is accurate (α=0, β=1), checks round-robin every N steps, logs, and survives a resume."""

import copy
import logging
import warnings

import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

import revtal
from revtal.reversible import NonFiniteGradientError, ReconstructionMonitor, ReconstructionWarning


class TwoStages(nn.Module):
    """Token model with two converted stages (two timm blocks each): x → first.blocks → second.blocks."""

    def __init__(self, dim: int = 16, depth: int = 2):
        super().__init__()
        self.first, self.second = nn.Module(), nn.Module()
        self.first.blocks = nn.Sequential(*[Block(dim, 2) for _ in range(depth)])
        self.second.blocks = nn.Sequential(*[Block(dim, 2) for _ in range(depth)])

    def forward(self, x):
        return self.second.blocks(self.first.blocks(x))


def converted(alpha, beta, backprop="reversible"):
    torch.manual_seed(0)
    return revtal.convert(TwoStages(), "dr2net", alpha=alpha, beta=beta, backprop=backprop)


def train_step(model, monitor, step, x):
    monitor.before_forward(step)
    model(x).square().mean().backward()
    return monitor.after_backward()


def test_bad_reconstruction_switches_stages_round_robin():
    model = converted(1.0, 0.01)  # float reconstruction amplifies rounding ~100x per branch
    monitor = ReconstructionMonitor(model, every=1, tolerance=1e-3, fallback="exact")
    x = torch.randn(2, 5, 16)
    with pytest.warns(ReconstructionWarning, match="first.blocks"):
        events = train_step(model, monitor, 0, x)
    assert [e.stage for e in events] == ["first.blocks"]
    event = events[0]
    assert event.relative_error > 1e-3 and (event.alpha, event.beta) == (1.0, 0.01)
    assert (event.step, event.previous, event.fallback) == (0, "reversible", "exact")
    first, second = revtal.reversible_stages(model)
    assert (first.backprop, second.backprop) == ("exact", "reversible")
    with pytest.warns(ReconstructionWarning, match="second.blocks"):
        events = train_step(model, monitor, 1, x)
    assert [e.stage for e in events] == ["second.blocks"] and second.backprop == "exact"
    # nothing is left to monitor: both stages use the fallback, and the exact stages now reconstruct bitwise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train_step(model, monitor, 2, x) == []
    assert [e.stage for e in monitor.events] == ["first.blocks", "second.blocks"]
    assert monitor.events[0].as_dict()["relative_error"] == event.relative_error


def test_good_reconstruction_stays_quiet_and_checks_every_n_steps():
    model = converted(0.0, 1.0)
    monitor = ReconstructionMonitor(model, every=2, tolerance=1e-3)
    x = torch.randn(2, 5, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(8):
            assert train_step(model, monitor, step, x) == []
    assert monitor.events == []
    assert [(r.step, r.stage) for r in monitor.history] == [
        (0, "first.blocks"), (2, "second.blocks"), (4, "first.blocks"), (6, "second.blocks")
    ]
    assert all(0 < r.relative_error < 1e-5 for r in monitor.history)
    assert all(st.backprop == "reversible" for st in revtal.reversible_stages(model))


def test_logger_receives_the_event_and_vanilla_fallback():
    model = converted(1.0, 0.01)
    logger = logging.getLogger("revtal.test.safety")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        monitor = ReconstructionMonitor(model, every=1, tolerance=1e-3, fallback="vanilla", logger=logger)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # with a logger, no warning is issued
            train_step(model, monitor, 0, torch.randn(2, 5, 16))
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1 and "first.blocks" in records[0].getMessage() and "vanilla" in records[0].getMessage()
    assert revtal.reversible_stages(model)[0].backprop == "vanilla"


def test_state_dict_reapplies_fallbacks_on_resume():
    model = converted(1.0, 0.01)
    monitor = ReconstructionMonitor(model, every=1, tolerance=1e-3)
    with pytest.warns(ReconstructionWarning):
        train_step(model, monitor, 0, torch.randn(2, 5, 16))
    state = monitor.state_dict()
    fresh = converted(1.0, 0.01)
    resumed = ReconstructionMonitor(fresh, every=1, tolerance=1e-3)
    resumed.load_state_dict(state)
    assert [st.backprop for st in revtal.reversible_stages(fresh)] == ["exact", "reversible"]
    assert resumed.events == monitor.events
    assert resumed.before_forward(1) == "second.blocks"  # the round-robin position survives too


def test_non_finite_gradient_names_stage_and_coefficients():
    model = converted(1.0, 1e-10)  # reconstruction overflows float32: ~1e10 amplification per branch
    # backward meets the upper stage first
    with pytest.raises(NonFiniteGradientError, match=r"'second.blocks'.*alpha=1.0, beta=1e-10"):
        model(torch.randn(2, 5, 16)).square().mean().backward()


def test_invalid_arguments_are_named():
    model = converted(0.0, 1.0)
    with pytest.raises(ValueError, match="fallback"):
        ReconstructionMonitor(model, fallback="reversible")
    with pytest.raises(ValueError, match="every"):
        ReconstructionMonitor(model, every=0)
    with pytest.raises(ValueError, match="no reversible stages"):
        ReconstructionMonitor(copy.deepcopy(TwoStages()))
