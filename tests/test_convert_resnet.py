"""ResNet converters (torchvision 2D ResNet, video r3d/mc3/r2plus1d): stage layout, the ReLU-inside-the-branch form
G_α = relu(b + α·x) (bitwise the pretrained network at α=1, β=0), gradient parity, BatchNorm statistics, memory, checkpoints, exact
reconstruction, unsupported blocks."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import resnet18, resnet50
from torchvision.models.video import mc3_18, r2plus1d_18, r3d_18
from torchvision.models.video import resnet as tv_video

import revtal
from revtal.reversible import reversible_stages
from revtal.utils.memory import saved_bytes
from tests.helpers import assert_bitwise_same_network, assert_reversible_matches_vanilla, max_relative_gap

# kind: (2D?, block class, conv builder for video blocks)
KINDS = {
    "basic_2d": (True, tv_resnet.BasicBlock, None),
    "bottleneck_2d": (True, tv_resnet.Bottleneck, None),
    "video_basic_3d": (False, tv_video.BasicBlock, tv_video.Conv3DSimple),
    "video_basic_no_temporal": (False, tv_video.BasicBlock, tv_video.Conv3DNoTemporal),
    "video_basic_2plus1d": (False, tv_video.BasicBlock, tv_video.Conv2Plus1D),
    "video_bottleneck": (False, tv_video.Bottleneck, tv_video.Conv3DSimple),
}


class TinyResNet(nn.Module):
    """stem → layer1 (width kept: every block reversible) → layer2 (stride 2 + wider: first block ordinary)."""

    def __init__(self, kind: str, depth1: int = 2, depth2: int = 3):
        super().__init__()
        two_d, block, conv = KINDS[kind]
        expansion = block.expansion
        Conv, Norm = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv3d, nn.BatchNorm3d)
        self.stem = nn.Sequential(Conv(3, 8, 3, padding=1, bias=False), Norm(8), nn.ReLU(inplace=True))

        def make(inplanes, planes, stride=1, downsample=None):
            if two_d:
                return block(inplanes, planes, stride, downsample)
            return block(inplanes, planes, conv, stride, downsample)

        self.layer1 = nn.Sequential(*[make(8, 8 // expansion) for _ in range(depth1)])
        stride = 2 if two_d else conv.get_downsample_stride(2)
        shortcut = nn.Sequential(Conv(8, 16, 1, stride=stride, bias=False), Norm(16))
        self.layer2 = nn.Sequential(make(8, 16 // expansion, 2, shortcut),
                                    *[make(16, 16 // expansion) for _ in range(depth2 - 1)])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(x.flatten(2).mean(-1))


def tiny(kind, seed=0, **kw):
    torch.manual_seed(seed)
    model = TinyResNet(kind, **kw)
    # non-trivial running statistics, so eval-mode BatchNorm is not the identity
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


def sample(kind, batch=4):
    shape = (batch, 3, 12, 12) if KINDS[kind][0] else (batch, 3, 4, 8, 8)
    return torch.randn(shape, generator=torch.Generator().manual_seed(5))


def _loss(model, x):
    return (model(x) ** 2).sum()


def _last_norm(block):
    if isinstance(block, tv_resnet.BasicBlock):
        return block.bn2
    if isinstance(block, tv_resnet.Bottleneck):
        return block.bn3
    return (block.conv2 if isinstance(block, tv_video.BasicBlock) else block.conv3)[1]


def test_stage_layout_of_torchvision_models():
    # full-size models on the meta device: structure and keys only (the tiny models below check the numbers)
    for build, first_plain in ((resnet18, 0), (resnet50, 1), (r3d_18, 0), (mc3_18, 0), (r2plus1d_18, 0)):
        with torch.device("meta"):
            model = build(num_classes=2)
        lengths = [len(getattr(model, f"layer{i}")) for i in (1, 2, 3, 4)]
        original = dict(model.state_dict())
        revtal.convert(model, "dr2net")
        layout = [(s.stage_name, s.plain_prefix, len(s.blocks())) for s in reversible_stages(model)]
        # layer1 changes shape only in Bottleneck nets (64 → 256 channels); layers 2-4 always start with a stride
        assert layout == [("layer1", first_plain, lengths[0])] + [
            (f"layer{i}", 1, lengths[i - 1]) for i in (2, 3, 4)
        ], build.__name__
        assert list(model.state_dict()) == list(original)
        model.load_state_dict(original, strict=True, assign=True)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_original_point_is_bitwise_the_pretrained_resnet(kind):
    # G_α(x) = relu(b(x) + α·x): at α=1, β=0 exactly the torchvision block, outputs and gradients
    ref = tiny(kind).train()
    x = sample(kind)
    assert_bitwise_same_network(ref, revtal.convert(copy.deepcopy(ref), "original").train(), x)


@pytest.mark.parametrize("alpha,beta", [(0.0, 1.0), (0.4, 0.6)])
def test_coupled_resnet_by_hand(alpha, beta):
    ref = tiny("basic_2d").eval()
    x = sample("basic_2d")
    model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=alpha, beta=beta, backprop="vanilla")

    def coupled(blocks, h):
        y = beta * h
        for block in blocks:
            body = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(h)))))
            h, y = F.relu(body + alpha * h) + y, beta * h  # α=0: Re²TAL's relu(b) inside the branch
        return h

    with torch.no_grad():
        h = coupled(ref.layer1, ref.stem(x))
        h = coupled(list(ref.layer2)[1:], ref.layer2[0](h))
        expected = ref.head(h.flatten(2).mean(-1))
        assert torch.allclose(model(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reversible_gradients_match_vanilla_float64_at_re2_point(kind):
    ref = tiny(kind).double().train()  # train: BatchNorm uses batch statistics of the reconstructed input
    x = sample(kind).double().requires_grad_(True)
    assert_reversible_matches_vanilla(ref, x, 1e-10, method="dr2net", alpha=0.0, beta=1.0)


@pytest.mark.parametrize("kind", ["basic_2d", "video_bottleneck"])
def test_batchnorm_running_stats_after_one_training_step_equal_vanilla(kind):
    ref = tiny(kind).double().train()
    x = sample(kind).double()
    models = {}
    for mode in ("reversible", "vanilla"):
        model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=0.5, beta=0.5, backprop=mode)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        _loss(model, x).backward()
        optimizer.step()
        models[mode] = model
    norms = 0
    for (name, a), b, original in zip(models["reversible"].named_modules(), models["vanilla"].modules(),
                                      ref.modules()):
        if isinstance(a, nn.modules.batchnorm._BatchNorm):
            norms += 1
            assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 1, name
            assert torch.equal(a.running_mean, b.running_mean), name
            assert torch.equal(a.running_var, b.running_var), name
            assert not torch.equal(a.running_mean, original.running_mean), name
    assert norms >= 8
    params = [list(m.parameters()) for m in models.values()]
    assert max_relative_gap(*params) < 1e-10


def test_saved_bytes_constant_in_depth_within_a_stage():
    for kind in ("basic_2d", "video_basic_2plus1d"):
        x = sample(kind, batch=2)
        saved, vanilla = {}, {}
        for depth in (2, 4, 6):
            model = revtal.convert(tiny(kind, depth2=depth), "dr2net", alpha=0.5, beta=0.5)
            saved[depth] = saved_bytes(lambda: _loss(model, x), model)
        for depth in (2, 6):
            model = revtal.convert(tiny(kind, depth2=depth), "dr2net", alpha=0.5, beta=0.5, backprop="vanilla")
            vanilla[depth] = saved_bytes(lambda: _loss(model, x), model)
        assert max(saved.values()) <= 1.05 * min(saved.values()), (kind, saved)
        # vanilla mode stores every block, on top of the (larger) stem, layer1 and layer2.0: it must grow
        assert vanilla[6] > 1.25 * vanilla[2], (kind, vanilla)


@pytest.mark.parametrize("kind", ["bottleneck_2d", "video_basic_3d"])
def test_original_checkpoint_loads_strictly_into_converted_model(kind):
    ref = tiny(kind).eval()
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    model = revtal.convert(tiny(kind, seed=1), "re2").eval()
    assert list(model.state_dict()) == list(ref.state_dict())
    buffer.seek(0)
    model.load_state_dict(torch.load(buffer), strict=True)
    for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_exact_backprop_reconstructs_every_stage_input_bitwise(kind):
    model = revtal.convert(tiny(kind), "dr2net", alpha=1.0, beta=1 / 8, backprop="exact").train()
    stages = reversible_stages(model)
    for stage in stages:
        assert stage.beta == 0.125
        stage.verify_next_backward()
    _loss(model, sample(kind)).backward()
    for stage in stages:
        assert stage.last_check is not None and stage.last_check.bitwise, (stage.stage_name, stage.last_check)


class _CustomBlock(nn.Module):
    downsample = None

    def forward(self, x):
        return x


def test_unsupported_blocks_are_named_with_the_supported_types():
    model = tiny("basic_2d")
    model.layer2[1] = _CustomBlock()
    with pytest.raises(TypeError, match=r"layer2\.1 is a .*_CustomBlock; .*torchvision\.models\.resnet\.BasicBlock"):
        revtal.convert(model)

    class SubclassedBlock(tv_video.BasicBlock):  # may override forward: not assumed to be a plain residual block
        pass

    model = tiny("video_basic_3d")
    model.layer1[1].__class__ = SubclassedBlock
    with pytest.raises(TypeError, match=r"layer1\.1 is a .*SubclassedBlock; .*video\.resnet\.Bottleneck"):
        revtal.convert(model)
    # a block with a non-identity shortcut anywhere in a stage stays ordinary; the runs around it are reversible
    model = tiny("basic_2d")
    model.layer2[1].downsample = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
    revtal.convert(model, "dr2net", alpha=0.5, beta=0.5)
    assert reversible_stages(model)[1].plain == {0, 1}


def test_ordinary_blocks_of_a_memory_free_stage_keep_only_their_input(monkeypatch):
    """layer2.0 (stride 2, projection shortcut) stays an ordinary block; in a memory-free stage it runs under
    checkpointing whose recompute leaves BatchNorm statistics alone (the running-stats test above covers that)."""
    import revtal.reversible.stage as stage_module

    x = sample("basic_2d", batch=2)
    model = revtal.convert(tiny("basic_2d"), "re2")
    checkpointed = saved_bytes(lambda: _loss(model, x), model)
    block = model.layer2.blocks()[0]
    stored = []
    handles = [m.register_forward_hook(lambda m, i, o: stored.append(o.numel() * o.element_size()))
               for m in block.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    monkeypatch.setattr(stage_module, "checkpoint_layer", lambda layer, *a, **k: layer(*a, **k))
    plain = saved_bytes(lambda: _loss(model, x), model)
    for handle in handles:
        handle.remove()
    # plain autograd stores the block's conv and norm outputs (about what its layers produce); checkpointing does not
    assert plain - checkpointed >= 0.5 * sum(stored), (plain, checkpointed, sum(stored))
