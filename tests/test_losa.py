"""LoSA: identity at initialisation, frozen backbone, depth-independent activation memory, the ablation switches, and
that a few training steps lower a loss — on tiny video ViT, Video Swin and video ResNet backbones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import revtal.backbones as backbones
from revtal.adapters import LoSA, LoSAConfig
from revtal.adapters.losa import SpatialReducer, area_weights, clip_time_positions, frame_time_encoding, resolve_layers
from revtal.utils.memory import saved_bytes
from tests.helpers import live_peak_bytes

CLIP = 4  # frames per clip of the tiny ViT
SIZE = 16  # pixels


def tiny_vit(depth: int = 4):
    return backbones.build("vit_tiny_video", num_frames=CLIP, img_size=SIZE, patch_size=8, depth=depth)


def clips_of(video: torch.Tensor, clip_frames: int) -> torch.Tensor:
    """(B, C, n·f, H, W) → (B·n, C, f, H, W), batch-major — written independently of LoSA's own splitting."""
    return torch.cat([torch.stack(torch.split(v, clip_frames, dim=1)) for v in video])


def projected(model, last: torch.Tensor) -> torch.Tensor:
    """``model.last_projection`` applied to (B, C, T) features in the (B, T, C) contiguous layout LoSA uses (matmul
    rounding may depend on the memory layout)."""
    return model.last_projection(last.transpose(1, 2).contiguous()).transpose(1, 2)


def reference_last(backbone, video: torch.Tensor, clip_frames: int) -> torch.Tensor:
    """F_N as the frozen backbone alone gives it: pooled final map per clip, clips concatenated in time,
    (B, C, n·T_N)."""
    with torch.no_grad():
        pooled = backbone.pool(backbone.forward_features(clips_of(video, clip_frames)))
    b = video.shape[0]
    return torch.cat(list(pooled.reshape(b, -1, *pooled.shape[1:]).unbind(1)), dim=-1)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return tiny_vit()


@pytest.fixture(scope="module")
def vit_s():  # ViT-S width and heads, two blocks, 16-pixel clips
    torch.manual_seed(0)
    return backbones.build("vit_s_video", num_frames=CLIP, img_size=SIZE, patch_size=8, depth=2)


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return backbones.build("swin3d_t")


@pytest.fixture(scope="module")
def r3d():
    torch.manual_seed(0)
    return backbones.build("r3d_18")


# --------------------------------------------------------------------------------------------- identity at init
@pytest.mark.parametrize("short_context", ["video", "clip"])
def test_fused_features_equal_last_layer_bitwise_at_init(vit, short_context):
    model = LoSA(vit, LoSAConfig(clip_frames=CLIP, short_context=short_context))
    video = torch.randn(2, 3, 3 * CLIP, SIZE, SIZE)
    out = model.features(video)
    reference = reference_last(vit, video, CLIP)
    assert out.fused.shape == (2, vit.out_channels, 3 * CLIP // vit.temporal_stride)
    assert torch.equal(out.last, reference)
    assert torch.equal(out.fused, reference)
    # the adapters are live (non-zero outputs): the identity comes from the zero gates and the [½I, ½I] projection
    assert all(x.abs().max() > 0 for x in out.short + out.long)
    # per-clip backbone calls agree up to float reduction order (pool_space vs map mean): tolerance, not bitwise
    per_clip = torch.cat([vit(c) for c in torch.split(video, CLIP, dim=2)], dim=-1)
    torch.testing.assert_close(out.fused, per_clip, rtol=1e-5, atol=1e-5)


def test_identity_with_adapter_width_is_projected_last_layer(vit):
    model = LoSA(vit, LoSAConfig(clip_frames=CLIP, dim=32))
    video = torch.randn(1, 3, 2 * CLIP, SIZE, SIZE)
    out = model.features(video)
    assert model.out_channels == 32 and out.fused.shape == (1, 32, 2 * CLIP // 2)
    assert torch.equal(out.fused, projected(model, reference_last(vit, video, CLIP)))


def test_fusion_projection_starts_as_half_identity_pair(vit):
    model = LoSA(vit, LoSAConfig(clip_frames=CLIP, layers=[0]))
    dim = model.out_channels
    weight = model.fusion.projection.weight
    assert torch.equal(weight[:, :dim], torch.eye(dim) / 2) and torch.equal(weight[:, dim:], torch.eye(dim) / 2)
    assert torch.equal(model.fusion.projection.bias, torch.zeros(dim))
    # same function as an nn.Linear holding the effective weight (up to matmul rounding)
    a, b = torch.randn(3, 5, dim), torch.randn(3, 5, dim)
    torch.testing.assert_close(model.fusion.projection(a, b), F.linear(torch.cat([a, b], -1), weight))


# ---------------------------------------------------------------------------------------------- frozen backbone
def test_no_gradient_reaches_the_backbone(vit):
    model = LoSA(vit, LoSAConfig(clip_frames=CLIP))
    model.train()
    assert not vit.training and model.reducers.training  # the frozen backbone stays in eval mode
    assert all(not p.requires_grad for p in vit.parameters())
    model(torch.randn(2, 3, 2 * CLIP, SIZE, SIZE)).square().mean().backward()
    assert all(p.grad is None for p in vit.parameters())
    trainable = model.trainable_parameters()
    assert {id(p) for p in trainable}.isdisjoint(id(p) for p in vit.parameters())
    # at init the gates and the projection get gradient (the adapters only after the gates open)
    assert model.fusion.gates_short.grad.abs().min() > 0 and model.fusion.gates_long.grad.abs().min() > 0
    assert model.fusion.projection.delta.grad.abs().max() > 0
    counts = model.parameter_counts()
    assert counts["learnable"] == sum(p.numel() for p in trainable)
    assert counts["total"] == counts["learnable"] + sum(p.numel() for p in vit.parameters())


# ------------------------------------------------------------------------------------------------------- memory
def test_saved_bytes_do_not_depend_on_backbone_depth():
    video = torch.randn(2, 3, 2 * CLIP, SIZE, SIZE)

    def losa_bytes(depth, layers):
        model = LoSA(tiny_vit(depth), LoSAConfig(clip_frames=CLIP, layers=layers))
        return saved_bytes(lambda: model(video), model)

    # the same number of adapted layers: identical activation memory at depth 2, 4 and 8
    fixed = [losa_bytes(depth, [0, -1]) for depth in (2, 4, 8)]
    assert fixed[0] > 0 and fixed[0] == fixed[1] == fixed[2]
    # every layer adapted: memory grows by exactly one adapter's share per added layer (second difference 0), and
    # that share is what one adapted layer costs at a fixed depth
    full = [losa_bytes(depth, "all") for depth in (2, 4, 6)]
    per_layer = (full[1] - full[0]) // 2
    assert full[2] - full[1] == full[1] - full[0] == 2 * per_layer
    assert per_layer == losa_bytes(4, [0, 1]) - losa_bytes(4, [0])
    # contrast: finetuning the backbone itself saves more, growing with depth
    finetune = []
    for depth in (2, 4):
        backbone = tiny_vit(depth)
        finetune.append(saved_bytes(lambda: backbone(clips_of(video, CLIP)), backbone))
    assert finetune[1] > finetune[0] > 0



def test_reduction_keeps_only_its_layer_map_for_backward():
    """The reduction's conv/LayerNorm/GELU are recomputed in backward: what it saves is the layer map (which the
    convolution's weight gradient needs anyway) and the pooled sequence the projection reads; without recomputing
    it keeps the LayerNorm's and the GELU's inputs too (two more maps of the convolution output's size)."""
    torch.manual_seed(0)
    layer_map = torch.randn(6, 32, 2, 8, 8)
    for kind, conv_width in (("separable", 32), ("full", 8)):
        recomputed = SpatialReducer(32, 8, kind, 3, recompute=True)
        kept = SpatialReducer(32, 8, kind, 3, recompute=False)
        kept.load_state_dict(recomputed.state_dict())
        projection_input = 6 * 2 * 32 * 4 if kind == "separable" else 0  # (N, T, C_i) float32
        assert saved_bytes(lambda: recomputed(layer_map), recomputed) == layer_map.nbytes + projection_input
        conv_output = 6 * conv_width * 2 * 8 * 8 * 4
        assert saved_bytes(lambda: kept(layer_map), kept) >= layer_map.nbytes + projection_input + 2 * conv_output


@pytest.mark.parametrize("autocast", [False, True])
def test_recomputed_reduction_gives_bitwise_the_same_features_and_gradients(vit, autocast):
    """Recomputing the reduction changes memory only: output and every adapter gradient are bitwise those of the
    model that keeps the reduction's activations (float32, and under bfloat16 autocast); and a training step's
    peak of live bytes is lower with several adapted layers."""
    video = torch.randn(2, 3, 2 * CLIP, SIZE, SIZE)
    outputs, gradients, peaks = [], [], []
    for recompute in (False, True):
        torch.manual_seed(1)  # the same adapter weights; gates open so the reductions get gradient
        model = LoSA(vit, LoSAConfig(clip_frames=CLIP, gate_init="one", recompute_reduction=recompute)).train()

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(video)
            out.float().square().mean().backward()
            return out

        outputs.append(step().detach())
        gradients.append([p.grad.clone() for p in model.trainable_parameters()])
        model.zero_grad(set_to_none=True)
        peaks.append(live_peak_bytes(step))
    assert torch.equal(outputs[0], outputs[1])
    assert all(g.abs().max() > 0 for g in gradients[1][:2])  # the first reducer's conv learns
    assert all(torch.equal(a, b) for a, b in zip(*gradients))
    assert peaks[1] < peaks[0]

# -------------------------------------------------------------------------------------------- other backbones
@pytest.mark.parametrize("name, clip_frames, size", [("vit_s", CLIP, SIZE), ("swin", 4, 32), ("r3d", 8, 32)])
def test_vit_s_swin_and_resnet_backbones(request, name, clip_frames, size):
    backbone = request.getfixturevalue(name)
    model = LoSA(backbone, LoSAConfig(clip_frames=clip_frames, dim=64, heads=4))
    video = torch.randn(1, 3, 2 * clip_frames, size, size)
    out = model.features(video)
    steps = 2 * clip_frames // model.temporal_stride
    assert model.temporal_stride == backbone.temporal_stride
    assert out.fused.shape == (1, 64, steps) and all(x.shape == (1, 64, steps) for x in out.short + out.long)
    assert torch.equal(out.fused, projected(model, reference_last(backbone, video, clip_frames)))
    widths = [r.project.in_features for r in model.reducers]
    if name == "vit_s":
        assert widths == [384, 384]
    else:  # per-stage widths differ (96..768 / 64..512): each reducer projects its own C_i to C
        assert len(set(widths)) == 4
    if name == "r3d":  # time halves per stage (8, 4, 2, 1 steps per clip): adapters resample to T_N
        assert model.layer_lengths == [8, 4, 2, 1]
        assert [a.resample is not None for a in model.long_adapters] == [True, True, True, False]
    out.fused.sum().backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert all(p.grad is not None for p in model.trainable_parameters())


def test_default_adapters_are_lightweight_and_the_wide_variant_remains(vit_s):
    light = LoSA(vit_s, LoSAConfig(clip_frames=CLIP))
    wide = LoSA(vit_s, LoSAConfig(clip_frames=CLIP, bottleneck=1.0))
    assert (light.adapter_dim, wide.adapter_dim) == (96, 384)  # ViT-S width 384: d = C/4 by default
    adapter = light.long_adapters[0]
    assert adapter.attention.k_proj_weight.shape == (96, 384) and adapter.up.weight.shape == (384, 96)
    assert [r.project.out_features for r in light.reducers] == [96, 96]
    assert all(a.up is None for a in wide.short_adapters) and wide.reducers[0].project.out_features == 384
    # the fused features keep the backbone width and start as the backbone's own, bitwise
    video = torch.randn(1, 3, 2 * CLIP, SIZE, SIZE)
    out = light.features(video)
    assert torch.equal(out.fused, reference_last(vit_s, video, CLIP)) and out.short[0].shape == out.fused.shape
    # per adapted layer: 2 cross-attentions (q, out: d², k, v: C·d each, up: d·C) + the reduction's C → d
    c, d = 384, 96
    per_layer = lambda m, i: sum(p.numel() for mod in (m.reducers[i], m.short_adapters[i], m.long_adapters[i])  # noqa: E731
                                 for p in mod.parameters())
    depthwise_and_norms = c * 9 + c + 2 * c + d
    attention = 2 * d * d + 3 * c * d + 4 * d + c  # weights and biases of q, k, v, out and up
    norms = 2 * d + 2 * c
    assert per_layer(light, 0) == depthwise_and_norms + c * d + 2 * (attention + norms)
    assert per_layer(light, 0) < 0.25 * per_layer(wide, 0)


# ------------------------------------------------------------------------------------------------ training run
def test_a_few_training_steps_lower_the_loss(vit):
    torch.manual_seed(1)
    model = LoSA(vit, LoSAConfig(clip_frames=CLIP))
    video = torch.randn(4, 3, 2 * CLIP, SIZE, SIZE)
    # toy regression: shift every feature step by (10×) the mean brightness of its first frame
    with torch.no_grad():
        target = reference_last(vit, video, CLIP) + 10 * video.mean((1, 3, 4))[:, None, ::2]
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(model(video), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert model.fusion.gates_short.abs().max() > 0 and model.fusion.gates_long.abs().max() > 0


# ---------------------------------------------------------------------------------------------------- ablations
def test_single_branch_keeps_identity_and_drops_the_other(vit):
    video = torch.randn(1, 3, 2 * CLIP, SIZE, SIZE)
    for use_short, use_long in ((True, False), (False, True)):
        model = LoSA(vit, LoSAConfig(clip_frames=CLIP, use_short=use_short, use_long=use_long))
        out = model.features(video)
        assert len(model.short_adapters) == 4 * use_short and len(model.long_adapters) == 4 * use_long
        assert (len(out.short), len(out.long)) == (len(model.short_adapters), len(model.long_adapters))
        assert torch.equal(out.fused, out.last)


def test_sum_fusion_and_gate_inits(vit):
    video = torch.randn(2, 3, 2 * CLIP, SIZE, SIZE)
    out = LoSA(vit, LoSAConfig(clip_frames=CLIP, fusion="sum")).features(video)
    torch.testing.assert_close(out.fused, out.last + sum(out.short) + sum(out.long))

    # gates at one: Proj = [½I, ½I] gives F_N + ½(Σ FS_i + Σ FL_i)
    out = LoSA(vit, LoSAConfig(clip_frames=CLIP, gate_init="one")).features(video)
    torch.testing.assert_close(out.fused, out.last + 0.5 * (sum(out.short) + sum(out.long)))

    model = LoSA(vit, LoSAConfig(clip_frames=CLIP, gate_init="random"))
    gates = model.fusion.gates_short
    assert ((gates >= 0) & (gates < 1)).all() and gates.abs().sum() > 0

    model = LoSA(vit, LoSAConfig(clip_frames=CLIP, gate_init="cosine"))
    assert not hasattr(model.fusion, "gates_short")
    out = model.features(video)
    assert out.gates_short.shape == (2, 4)
    for i, fs in enumerate(out.short):  # weights: cosine over channels, averaged over time, per video
        expected = (fs * out.last).sum(1) / (fs.norm(dim=1) * out.last.norm(dim=1))
        torch.testing.assert_close(out.gates_short[:, i], expected.mean(-1))
    weighted = lambda w, xs: sum(w[:, i, None, None] * x for i, x in enumerate(xs))  # noqa: E731
    torch.testing.assert_close(
        out.fused, out.last + 0.5 * (weighted(out.gates_short, out.short) + weighted(out.gates_long, out.long))
    )


def test_layer_sets():
    assert resolve_layers("all", 4) == [0, 1, 2, 3]
    assert resolve_layers("shallower", 4) == [0, 1] and resolve_layers("deeper", 4) == [2, 3]
    assert resolve_layers("shallower", 5) == [0, 1] and resolve_layers("deeper", 5) == [2, 3, 4]
    assert resolve_layers([-1, 0], 12) == [0, 11]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers([12], 12)
    with pytest.raises(ValueError, match="twice"):
        resolve_layers([1, -11], 12)
    with pytest.raises(ValueError, match="selects no layer"):
        resolve_layers("shallower", 1)


def test_short_range_clip_context_sees_only_its_clip(vit):
    model = LoSA(vit, LoSAConfig(clip_frames=CLIP, short_context="clip", use_long=False))
    video = torch.randn(1, 3, 2 * CLIP, SIZE, SIZE)
    changed = video.clone()
    changed[:, :, CLIP:] += 1.0  # only the second clip
    before, after = model.features(video), model.features(changed)
    steps = CLIP // model.temporal_stride
    for fs_before, fs_after in zip(before.short, after.short):
        assert torch.equal(fs_before[..., :steps], fs_after[..., :steps])
        assert not torch.allclose(fs_before[..., steps:], fs_after[..., steps:])


def test_video_context_short_range_equals_per_clip_attention(vit):
    """With keys/values of the whole video, running each clip's queries separately is the same computation as the
    concatenated query sequence LoSA uses (softmax is per query)."""
    model = LoSA(vit, LoSAConfig(clip_frames=CLIP, layers=[1]))
    video = torch.randn(1, 3, 3 * CLIP, SIZE, SIZE)
    clips = clips_of(video, CLIP)
    pooled, (layer_map,) = model.frozen_features(clips, model.layer_indices)
    last = pooled.transpose(1, 2).reshape(1, -1, pooled.shape[1])
    query = model.reducers[0](layer_map)  # (3, T_i, C)
    adapter = model.short_adapters[0]
    steps = query.shape[1]
    last_time = clip_time_positions(steps, 3, CLIP, last.device)[None]
    separately = torch.cat(
        [adapter(query[j:j + 1], last_time[:, j * steps:(j + 1) * steps], last, last_time) for j in range(3)], 1
    )
    torch.testing.assert_close(model.features(video).short[0], separately.transpose(1, 2))


def test_clip_batching_does_not_change_features(vit):
    video = torch.randn(1, 3, 3 * CLIP, SIZE, SIZE)
    whole = LoSA(vit, LoSAConfig(clip_frames=CLIP))
    chunked = LoSA(vit, LoSAConfig(clip_frames=CLIP, clip_batch=2))
    chunked.load_state_dict(whole.state_dict())
    torch.testing.assert_close(chunked(video), whole(video), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- helpers
def test_area_weights_and_time_axis():
    assert torch.equal(area_weights(4, 2), torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]))
    assert torch.equal(area_weights(2, 3), torch.tensor([[1.0, 0], [0.5, 0.5], [0, 1.0]]))
    # 2 steps per clip of 4 frames, 2 clips: centres at frames 1, 3, 5, 7
    assert torch.equal(clip_time_positions(2, 2, 4, torch.device("cpu")), torch.tensor([1.0, 3.0, 5.0, 7.0]))
    encoding = frame_time_encoding(torch.tensor([0.0, 2.0]), 4)
    assert torch.equal(encoding[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    two = torch.tensor(2.0)  # frequencies 1 and 1/10000^(2/4) = 1/100
    torch.testing.assert_close(encoding[1], torch.stack([two.sin(), two.cos(), (two / 100).sin(), (two / 100).cos()]))


def test_bad_input_and_config_errors(vit):
    model = LoSA(vit, LoSAConfig(clip_frames=CLIP, layers=[0]))
    with pytest.raises(ValueError, match=r"T=6 frames is not a positive multiple of clip_frames=4"):
        model(torch.randn(1, 3, 6, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"LoSAConfig\.fusion must be one of"):
        LoSAConfig(fusion="concat")
    with pytest.raises(ValueError, match=r"LoSAConfig\.layers"):
        LoSAConfig(layers=[])
    with pytest.raises(ValueError, match="both False"):
        LoSAConfig(use_short=False, use_long=False)
    with pytest.raises(ValueError, match="bottleneck"):
        LoSAConfig(bottleneck=0)
    with pytest.raises(ValueError, match=r"my.yaml: unknown LoSA option\(s\) \['gates'\]"):
        LoSAConfig.from_mapping({"gates": "zero"}, source="my.yaml")
    with pytest.raises(ValueError, match="cannot run a clip of clip_frames=8"):
        LoSA(vit, LoSAConfig(clip_frames=8))  # the tiny ViT was built for 4-frame clips
    with pytest.raises(ValueError, match="not divisible by heads=3"):
        LoSA(vit, LoSAConfig(clip_frames=CLIP, heads=3))
