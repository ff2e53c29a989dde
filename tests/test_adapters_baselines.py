"""LoSA Tab. 2's baselines: ST-Adapter and AIM (adapters inside the frozen ViT's blocks) start as the pretrained
backbone bitwise and backpropagate through it; UniPT (a parallel network, like LoSA) does not. Only adapters learn."""

from __future__ import annotations

import pytest
import torch

import revtal.backbones as backbones
from revtal.adapters import AIM, AIMConfig, LoSA, LoSAConfig, STAdapter, STAdapterConfig, UniPT, UniPTConfig
from revtal.bench.plan import plan_recipe
from revtal.engine.config import config_from_dict
from revtal.utils.memory import saved_bytes

CLIP = 4  # frames per clip of the tiny ViT (tubelet 2: two steps per clip)
SIZE = 16  # pixels (patch 8: a 2 × 2 grid)

IN_BLOCK = [(STAdapter, STAdapterConfig), (AIM, AIMConfig)]
SIDE = [(UniPT, UniPTConfig), (LoSA, LoSAConfig)]


def tiny_vit(depth: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return backbones.build("vit_tiny_video", num_frames=CLIP, img_size=SIZE, patch_size=8, depth=depth)


def reference_features(backbone, video: torch.Tensor) -> torch.Tensor:
    """The frozen backbone alone, clip by clip (written independently of the adapters' clip cutting): pooled final
    map per clip, clips concatenated in time, (B, C, n·T')."""
    with torch.no_grad():
        per_video = []
        for v in video:
            clips = torch.stack(torch.split(v, CLIP, dim=1))  # (n, C, CLIP, H, W)
            pooled = backbone.pool(backbone.forward_features(clips))  # (n, C, T')
            per_video.append(torch.cat(list(pooled), dim=-1))
    return torch.stack(per_video)


def perturb(model, seed: int = 1) -> None:
    """Random values in every learnable parameter: the adapters are live, no longer the identity."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(0, 0.2)


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()


# --------------------------------------------------------------------------------------------- identity at init
@pytest.mark.parametrize("method, config", [
    (STAdapter, {}), (STAdapter, {"position": "both", "kernel": [3, 3, 3]}), (STAdapter, {"layers": "deeper"}),
    (AIM, {}), (AIM, {"temporal": False}), (AIM, {"layers": [1, -1]}),
])
def test_in_block_adapters_start_as_the_frozen_backbone_bitwise(vit, method, config):
    configs = {STAdapter: STAdapterConfig, AIM: AIMConfig}
    model = method(vit, configs[method](clip_frames=CLIP, **config)).train()
    video = torch.randn(2, 3, 3 * CLIP, SIZE, SIZE)
    out = model(video)
    assert out.shape == (2, vit.out_channels, 3 * CLIP // vit.temporal_stride)
    assert torch.equal(out, reference_features(vit, video))
    perturb(model)  # the identity comes from the zero initialisation, not from adapters that do nothing
    assert not torch.allclose(model(video), out)


def test_st_adapter_block_is_the_adapter_then_the_original_block(vit):
    model = STAdapter(vit, STAdapterConfig(clip_frames=CLIP))
    perturb(model)
    block, adapter = vit.net.blocks[2], model.adapters["2"]["attn"]
    tokens = torch.randn(3, 8, vit.out_channels)  # 3 clips of a (2, 2, 2) token grid
    expected = block(adapter(tokens, model.grid))
    assert torch.equal(model.run_block(2, block, tokens), expected)
    # the depthwise (3, 1, 1) convolution mixes each channel over time only, at each spatial position
    x = torch.randn(1, 8, vit.out_channels)
    y = x.clone()
    y[:, 3] += 1.0  # token (t=0, h=1, w=1)
    diff = (adapter(y, model.grid) - adapter(x, model.grid)).abs().sum(-1)[0]
    assert set(diff.nonzero().flatten().tolist()) == {3, 7}  # the same position at t=0 and t=1


def test_aim_temporal_attention_attends_over_time_at_each_position(vit):
    model = AIM(vit, AIMConfig(clip_frames=CLIP))
    block = vit.net.blocks[0]
    tokens = torch.randn(2, 8, vit.out_channels)  # (T'=2) × (2 × 2) positions, time-major
    out = model.temporal_attention(block, tokens)
    for position in range(4):
        sequence = tokens[:, position::4]  # that position at t = 0, 1
        torch.testing.assert_close(out[:, position::4], block.attn(block.norm1(sequence)))


# ---------------------------------------------------------------------------------------------- what learns
@pytest.mark.parametrize("method, config", IN_BLOCK + SIDE)
def test_only_adapters_learn_and_the_backbone_gets_no_gradient(vit, method, config):
    model = method(vit, config(clip_frames=CLIP)).train()
    assert not vit.training and all(not p.requires_grad for p in vit.parameters())
    perturb(model)
    model(torch.randn(2, 3, 2 * CLIP, SIZE, SIZE)).square().mean().backward()
    assert all(p.grad is None for p in vit.parameters())
    trainable = model.trainable_parameters()
    assert trainable and {id(p) for p in trainable}.isdisjoint(id(p) for p in vit.parameters())
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in trainable)
    counts = model.parameter_counts()
    assert counts["learnable"] == sum(p.numel() for p in trainable)
    assert counts["total"] == counts["learnable"] + sum(p.numel() for p in vit.parameters())
    for p in trainable:
        p.grad = None


def test_parameter_counts_follow_the_papers_widths():
    vit = tiny_vit(depth=2)  # C = 64
    c = vit.out_channels
    st = STAdapter(vit, STAdapterConfig(clip_frames=CLIP))  # r = C/2, one adapter per block, kernel (3, 1, 1)
    r = c // 2
    assert st.parameter_counts()["learnable"] == 2 * ((c * r + r) + (r * 3 + r) + (r * c + c))
    aim = AIM(vit, AIMConfig(clip_frames=CLIP))  # three adapters of width C/4 per block
    h = c // 4
    assert aim.parameter_counts()["learnable"] == 2 * 3 * ((c * h + h) + (h * c + c))
    unipt = UniPT(vit, UniPTConfig(clip_frames=CLIP))  # d = C/2; per layer C -> d, anchor, gate, up
    d = c // 2
    assert unipt.parameter_counts()["learnable"] == 2 * (c * d + d) + (c * d + d) + (d + 1) + (d * c + c)


# ------------------------------------------------------------------------------------------------------ memory
def _saved(method, config, depth: int) -> int:
    model = method(tiny_vit(depth), config).train()
    video = torch.randn(1, 3, 2 * CLIP, SIZE, SIZE)
    return saved_bytes(lambda: model(video), model)


@pytest.mark.parametrize("method, config", IN_BLOCK)
def test_in_block_adapters_keep_every_frozen_block_above_them(method, config):
    """One adapter in the first block only: its gradient passes back through every later (frozen) block, so what
    autograd keeps grows by the same amount with every block added on top."""
    first_only = config(clip_frames=CLIP, layers=[0])
    saved = [_saved(method, first_only, depth) for depth in (2, 4, 6)]
    per_block = (saved[1] - saved[0]) // 2
    assert per_block > 0 and saved[2] - saved[1] == saved[1] - saved[0] == 2 * per_block
    # a frozen block above the adapter keeps about as much as a block with an adapter of its own: the adapter's
    # own share is small next to the block's activations
    adapted_block = _saved(method, config(clip_frames=CLIP, layers=[0, 1]), 4) - saved[1] + per_block
    assert per_block > 0.5 * adapted_block


@pytest.mark.parametrize("method, config", SIDE)
def test_side_networks_save_nothing_of_the_backbone(method, config):
    """Adapting the same layers (the first and the last), UniPT and LoSA save exactly the same bytes at any backbone
    depth: the backbone runs under no_grad and only the side network's own activations are kept."""
    saved = [_saved(method, config(clip_frames=CLIP, layers=[0, -1]), depth) for depth in (2, 4, 6)]
    assert saved[0] > 0 and saved[0] == saved[1] == saved[2]


def test_in_block_adapters_save_more_than_side_networks_at_depth():
    depth = 6
    in_block = [_saved(m, c(clip_frames=CLIP), depth) for m, c in IN_BLOCK]
    side = [_saved(UniPT, UniPTConfig(clip_frames=CLIP), depth)]
    assert min(in_block) > max(side)


# --------------------------------------------------------------------------------------------------- UniPT
def test_unipt_output_is_the_backbone_feature_plus_a_learned_residual(vit):
    model = UniPT(vit, UniPTConfig(clip_frames=CLIP))
    video = torch.randn(2, 3, 2 * CLIP, SIZE, SIZE)
    reference = reference_features(vit, video)
    assert not torch.allclose(model(video), reference)  # random up-projection, as in the authors' code
    with torch.no_grad():
        model.up.weight.zero_()
        model.up.bias.zero_()
    assert torch.equal(model(video), reference)


def test_unipt_clips_do_not_see_each_other_but_losa_long_range_does(vit):
    video = torch.randn(1, 3, 2 * CLIP, SIZE, SIZE)
    changed = video.clone()
    changed[:, :, CLIP:] = torch.randn_like(changed[:, :, CLIP:])  # only the second clip differs
    steps = CLIP // vit.temporal_stride
    unipt = UniPT(vit, UniPTConfig(clip_frames=CLIP))
    assert torch.equal(unipt(video)[..., :steps], unipt(changed)[..., :steps])
    losa = LoSA(vit, LoSAConfig(clip_frames=CLIP))
    perturb(losa)
    assert not torch.allclose(losa(video)[..., :steps], losa(changed)[..., :steps])


def test_unipt_reads_stage_maps_of_a_video_resnet():
    torch.manual_seed(0)
    model = UniPT(backbones.build("r3d_18"), UniPTConfig(clip_frames=8, probe_size=32)).train()
    video = torch.randn(1, 3, 16, 32, 32)
    out = model(video)
    assert out.shape[:2] == (1, 512) and out.shape[-1] == 2 * model.last_length
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.trainable_parameters())


# --------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("method, config", IN_BLOCK + [(UniPT, UniPTConfig)])
def test_a_few_training_steps_lower_the_loss(vit, method, config):
    torch.manual_seed(0)
    model = method(vit, config(clip_frames=CLIP)).train()
    video = torch.randn(2, 3, 2 * CLIP, SIZE, SIZE)
    target = torch.randn(2, vit.out_channels, 2 * CLIP // vit.temporal_stride)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = (model(video) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0]


# ------------------------------------------------------------------------------------------------ errors
def test_bad_configs_and_backbones_are_clear_errors(vit):
    with pytest.raises(ValueError, match=r"my.yaml: unknown ST-Adapter option\(s\) \['width'\]"):
        STAdapterConfig.from_mapping({"width": 3}, source="my.yaml")
    with pytest.raises(ValueError, match=r"STAdapterConfig.kernel must be three odd"):
        STAdapterConfig(kernel=[2, 1, 1])
    with pytest.raises(ValueError, match=r"STAdapterConfig.position must be one of"):
        STAdapterConfig(position="after")
    with pytest.raises(ValueError, match=r"AIMConfig: temporal, spatial and joint are all False"):
        AIMConfig(temporal=False, spatial=False, joint=False)
    with pytest.raises(ValueError, match=r"UniPTConfig.bottleneck must be in \(0, 1\]"):
        UniPTConfig(bottleneck=0)
    with pytest.raises(ValueError, match=r"AIMConfig.clip_frames=8 but the ViT was built for clips of 4"):
        AIM(vit, AIMConfig(clip_frames=8))
    with pytest.raises(ValueError, match=r"STAdapterConfig: in-block adapters need a video ViT backbone"):
        STAdapter(backbones.build("r3d_18"), STAdapterConfig(clip_frames=8))
    with pytest.raises(ValueError, match=r"AIMConfig.layers: index 9 is out of range"):
        AIM(vit, AIMConfig(clip_frames=CLIP, layers=[9]))
    with pytest.raises(ValueError, match=r"STAdapter: video length T=6 frames is not a positive multiple"):
        STAdapter(vit, STAdapterConfig(clip_frames=CLIP))(torch.randn(1, 3, 6, SIZE, SIZE))


# -------------------------------------------------------------------------------------------- revtal plan
PLAN_RECIPE = {
    "data": {"num_frames": 16, "img_size": 32, "batch_size": 1},
    "backbone": {"name": "vit_tiny_video", "options": {"patch_size": 16, "tubelet_size": 2, "depth": 4},
                 **{m: {"clip_frames": 8} for m in ("losa", "unipt", "st_adapter", "aim")}},
    "localizer": {"options": {"embed_dim": 32, "head_dim": 32, "num_heads": 4, "window_size": 3,
                              "num_branch_blocks": 1, "regression_ranges": [[0, 4], [4, 10000]]}},
}


def test_plan_of_the_adapter_modes_on_fake_tensors_equals_the_real_cpu_step():
    """``revtal plan`` builds each adapter mode on the meta device and runs it on fake tensors: the same peak and
    split as the real CPU step; the in-block adapter keeps more activations than the side network."""
    config = config_from_dict(PLAN_RECIPE)
    activations = {}
    for mode in ("st_adapter", "unipt"):  # one of each family (the others build through the same AdapterMode)
        real = plan_recipe(config, mode, classes=3, fake=False, rules="cpu")
        simulated = plan_recipe(config, mode, classes=3, fake=True, rules="cpu")
        assert simulated == real, mode
        activations[mode] = real.split["activations"]
    assert activations["st_adapter"] > activations["unipt"] > 0
