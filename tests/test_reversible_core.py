"""The reversible core on timm ViTs: equivalence, gradient parity, memory, RNG, BatchNorm, autocast, errors."""

import copy

import pytest
import torch
from torch import nn

import revtal
from revtal.reversible import Branch, Coupling, ReversibleStage, reversible_stages
from revtal.reversible.function import ReversibleBranchFunction
from revtal.utils.memory import saved_bytes
from tests.helpers import (
    assert_bitwise_same_network,
    assert_reversible_matches_vanilla,
    gradients_per_mode,
    grads,
    max_relative_gap,
    tiny_vit,
)


def _loss(model, x):
    return (model(x) ** 2).sum()


def test_original_point_is_bitwise_the_pretrained_network():
    ref = tiny_vit(depth=3)
    assert_bitwise_same_network(ref, revtal.convert(copy.deepcopy(ref), "original"), torch.randn(2, 3, 16, 16))


def test_dr2net_at_alpha1_beta0_vanilla_equals_original_and_reversible_refuses():
    ref = tiny_vit(depth=2)
    model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=1.0, beta=0.0, backprop="vanilla")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(ref(x), model(x))
    with pytest.raises(ValueError, match="beta > 0"):
        revtal.convert(copy.deepcopy(ref), "dr2net", alpha=1.0, beta=0.0, backprop="reversible")
    with pytest.raises(ValueError, match="beta > 0"):
        revtal.set_coefficients(revtal.convert(copy.deepcopy(ref), "re2"), 1.0, -0.5)


def test_state_dict_keys_unchanged_and_original_checkpoint_loads_strictly():
    ref = tiny_vit(depth=2)
    model = revtal.convert(tiny_vit(depth=2, seed=1), "dr2net")
    assert list(model.state_dict().keys()) == list(ref.state_dict().keys())
    model.load_state_dict(ref.state_dict(), strict=True)
    for a, b in zip(ref.parameters(), model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("alpha,beta", [(0.0, 1.0), (0.5, 0.5), (1.0, 0.5), (0.3, 0.7), (0.8, 0.9)])
def test_reversible_gradients_match_vanilla_float64(alpha, beta):
    ref = tiny_vit(depth=4).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    assert_reversible_matches_vanilla(ref, x, 1e-10, method="dr2net", alpha=alpha, beta=beta)


def test_re2_published_convention_duplicate_input_mean_output():
    ref = tiny_vit(depth=3).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    model = revtal.convert(copy.deepcopy(ref), "re2")
    stage = reversible_stages(model)[0]
    assert (stage.alpha, stage.beta, stage.coupling.input, stage.coupling.output) == (0.0, 1.0, "duplicate", "mean")
    # hand-written Re² rewiring: x_i = F_i(x_{i-1}) + x_{i-2}, x_{-1} = x_0 = input, output (x_n + x_{n-1}) / 2
    branches = stage.branches()
    tokens = ref.norm_pre(ref.patch_drop(ref._pos_embed(ref.patch_embed(x))))
    prev, cur = tokens, tokens
    for branch in branches:
        prev, cur = cur, branch.g(cur, stage.coupling) + prev  # G = F at alpha=0
    expected = 0.5 * (cur + prev)
    with torch.no_grad():
        got = stage(tokens)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    # and the memory-free backward agrees with vanilla for this convention too
    assert_reversible_matches_vanilla(ref, x, 1e-10, method="re2")


def test_float32_reversible_at_re2_point_within_documented_tolerance():
    ref = tiny_vit(depth=4)
    # documented in docs/REVERSIBLE.md: float32 reversible backprop at (0, 1) matches vanilla to ~1e-5 relative
    assert_reversible_matches_vanilla(ref, torch.randn(2, 3, 16, 16), 1e-4, method="dr2net", alpha=0.0, beta=1.0)


def _saved(model, x):
    return saved_bytes(lambda: _loss(model, x), model)


def test_memory_constant_in_depth_and_far_below_conventional():
    x = torch.randn(2, 3, 16, 16)
    converted = {}
    for depth in (4, 8, 16):
        model = revtal.convert(tiny_vit(depth=depth), "dr2net", alpha=0.5, beta=0.5)
        converted[depth] = _saved(model, x)
    smallest = min(converted.values())
    assert max(converted.values()) <= 1.05 * smallest, converted
    conventional = _saved(tiny_vit(depth=12), x)
    reversible_12 = _saved(revtal.convert(tiny_vit(depth=12), "dr2net", alpha=0.5, beta=0.5), x)
    assert reversible_12 <= conventional / 5, (reversible_12, conventional)
    # vanilla mode stores everything: it must grow with depth (proves the meter sees the stage's tensors)
    v4 = _saved(revtal.convert(tiny_vit(depth=4), "dr2net", alpha=0.5, beta=0.5, backprop="vanilla"), x)
    v8 = _saved(revtal.convert(tiny_vit(depth=8), "dr2net", alpha=0.5, beta=0.5, backprop="vanilla"), x)
    assert v8 > 1.5 * v4


def test_dropout_and_drop_path_masks_are_replayed_in_recompute():
    ref = tiny_vit(depth=3, drop_rate=0.2, attn_drop_rate=0.2, proj_drop_rate=0.2, drop_path_rate=0.3).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    g = []
    for mode in ("reversible", "vanilla"):
        model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=0.4, beta=0.6, backprop=mode).train()
        torch.manual_seed(123)
        out = model(x)
        state_after_forward = torch.get_rng_state()
        (out ** 2).sum().backward()
        # the recompute must not consume the global random stream
        assert torch.equal(torch.get_rng_state(), state_after_forward)
        g.append(grads(model))
    assert max_relative_gap(g[0], g[1]) < 1e-10
    model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=0.4, beta=0.6).train()
    torch.manual_seed(5)
    a = model(x)
    b = model(x)
    assert not torch.equal(a, b), "masks must differ between iterations"
    torch.manual_seed(5)
    assert torch.equal(model(x), a), "a fixed seed must reproduce the run"


class _ConvBranch(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv1d(c, c, 3, padding=1, bias=False)  # a bias before BN has a zero gradient
        self.bn = nn.BatchNorm1d(c)

    def forward(self, x):
        return torch.tanh(self.bn(self.conv(x)))


def _conv_branches(block, context):
    return [Branch(block, block)]


def _bn_stage(mode):
    torch.manual_seed(0)
    blocks = [_ConvBranch(6) for _ in range(3)]
    return ReversibleStage(blocks, _conv_branches, Coupling(0.5, 0.5), backprop=mode).double().train()


def test_batchnorm_running_stats_updated_exactly_once():
    x = torch.randn(4, 6, 10, dtype=torch.float64)
    stages = {mode: _bn_stage(mode) for mode in ("reversible", "vanilla")}
    for stage in stages.values():
        (stage(x) ** 2).sum().backward()
    for a, b in zip(stages["reversible"].modules(), stages["vanilla"].modules()):
        if isinstance(a, nn.BatchNorm1d):
            assert int(a.num_batches_tracked) == 1
            assert torch.equal(a.running_mean, b.running_mean)
            assert torch.equal(a.running_var, b.running_var)
    assert max_relative_gap(grads(stages["reversible"]), grads(stages["vanilla"])) < 1e-10


def test_bf16_autocast_gives_finite_gradients_close_to_vanilla():
    ref = tiny_vit(depth=3)
    x = torch.randn(2, 3, 16, 16)
    g = []
    for mode in ("reversible", "vanilla"):
        model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=0.0, beta=1.0, backprop=mode)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model, x)
        loss.backward()
        g.append(grads(model))
        assert all(torch.isfinite(t).all() for t in g[-1])
    # the recompute runs under the same autocast state, so both see the same bf16 rounding
    assert max_relative_gap(g[0], g[1]) < 1e-2


def test_no_grad_and_eval_use_no_custom_function(monkeypatch):
    model = revtal.convert(tiny_vit(depth=2), "dr2net", alpha=0.5, beta=0.5).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)

    def forbidden(*args, **kwargs):
        raise AssertionError("custom Function used without grad")

    monkeypatch.setattr(ReversibleBranchFunction, "apply", forbidden)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    for p in model.parameters():
        p.requires_grad_(False)
    assert torch.equal(model(x), expected)


def test_input_without_grad_and_frozen_parameters_work():
    ref = tiny_vit(depth=2).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    g = []
    for mode in ("reversible", "vanilla"):
        model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=0.5, beta=0.5, backprop=mode)
        for p in model.patch_embed.parameters():
            p.requires_grad_(False)
        model.blocks[0].attn.qkv.weight.requires_grad_(False)
        _loss(model, x).backward()
        assert model.blocks[0].attn.qkv.weight.grad is None
        g.append(grads(model))
    assert max_relative_gap(g[0], g[1]) < 1e-10


def test_unsupported_models_and_blocks_are_named():
    with pytest.raises(TypeError, match=r"Conv2d.*Supported module types: .*timm\.models\.vision_transformer\.Block"):
        revtal.convert(nn.Conv2d(3, 3, 3))
    model = tiny_vit(depth=2)
    model.blocks[1] = nn.Identity()
    with pytest.raises(TypeError, match=r"blocks\.1 is a torch\.nn\.modules\.linear\.Identity"):
        revtal.convert(model)
    converted = revtal.convert(tiny_vit(depth=2))
    with pytest.raises(ValueError, match="already converted"):
        revtal.convert(converted)
    with pytest.raises(ValueError, match="method must be one of"):
        revtal.convert(tiny_vit(depth=2), "revnet")


def test_set_coefficients_is_one_call_and_changes_the_function():
    model = revtal.convert(tiny_vit(depth=2).double(), "dr2net")
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        a = model(x)
        assert revtal.set_coefficients(model, 0.3, 0.7) == (0.3, 0.7)
        b = model(x)
    assert not torch.allclose(a, b)
    assert all((s.alpha, s.beta) == (0.3, 0.7) for s in reversible_stages(model))


def test_torch_compile_runs_the_stage_eagerly_with_correct_gradients():
    ref = tiny_vit(depth=2).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    g = []
    for compiled in (False, True):
        model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=0.5, beta=0.5)
        runner = torch.compile(model, backend="eager") if compiled else model
        _loss(runner, x).backward()
        g.append(grads(model))
    assert max_relative_gap(g[0], g[1]) < 1e-10


def test_checkpoint_mode_matches_vanilla_and_stores_one_input_per_block():
    ref = tiny_vit(depth=4).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    (g_ckpt, _), (g_van, _) = gradients_per_mode(ref, x, modes=("checkpoint", "vanilla"), method="original")
    assert max_relative_gap(g_ckpt, g_van) < 1e-12
    x32 = torch.randn(2, 3, 16, 16)
    per_depth = {}
    for depth in (4, 8):
        model = revtal.convert(tiny_vit(depth=depth), "original", backprop="checkpoint")
        per_depth[depth] = _saved(model, x32)
    tokens_bytes = 2 * 5 * 32 * 4
    assert per_depth[8] - per_depth[4] == 4 * tokens_bytes  # one stored block input per extra block
