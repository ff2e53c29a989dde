"""Backbone builder: every registered name, temporal features and intermediates, checkpoint errors, clip classifier."""

import copy

import pytest
import torch
from torchvision.models import video as tv_video
from torchvision.ops import StochasticDepth

import revtal
from revtal.backbones import CheckpointMismatchError, ClipClassifier, build, list_backbones, register_backbone
from revtal.reversible import reversible_stages

EXPECTED = {
    "vit_tiny_video", "vit_s_video", "vit_b_video", "vit_l_video", "vit_g_video",
    "swin3d_t", "swin3d_s", "swin3d_b", "r3d_18", "mc3_18", "r2plus1d_18",
}
# ViTs of the real widths but one block deep keep the test cheap; other networks are built in full
CHEAP_OPTS = {name: {"depth": 1, "patch_size": 8} for name in EXPECTED if name.startswith("vit_")}
NUM_FRAMES, SIZE = 8, 32


def test_registry_lists_the_issue_names_and_refuses_duplicates():
    # SlowFast (pytorchvideo) has its own tests at tiny widths (tests/test_backbones_slowfast.py)
    assert set(list_backbones()) == EXPECTED | {"slowfast_r50", "slowfast_r101"}
    assert list_backbones("swin3d_*") == ["swin3d_b", "swin3d_s", "swin3d_t"]
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(lambda **kw: None, name="r3d_18")
    with pytest.raises(ValueError, match="unknown backbone 'vit_x'.*r3d_18"):
        build("vit_x")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_backbone_gives_temporal_features_and_intermediates(name):
    backbone = build(name, num_frames=NUM_FRAMES, img_size=SIZE, **CHEAP_OPTS.get(name, {})).eval()
    video = torch.randn(2, 3, NUM_FRAMES, SIZE, SIZE)
    with torch.no_grad():
        features = backbone(video)
        final, intermediates = backbone.forward_features(video, return_intermediates=True)
    assert features.shape == (2, backbone.out_channels, NUM_FRAMES // backbone.temporal_stride)
    assert final.shape[:3] == features.shape and final.ndim == 5
    assert len(intermediates) >= 1 and all(t.ndim == 5 and t.shape[0] == 2 for t in intermediates)
    assert intermediates[-1].shape[1] == backbone.out_channels
    if not name.startswith("vit_"):  # convolutional / Swin features: plain spatial mean of the final map
        assert torch.allclose(features, final.mean((-2, -1)))


def test_bad_checkpoint_error_lists_missing_unexpected_and_mismatched_keys(tmp_path):
    small = build("vit_tiny_video", num_frames=4, img_size=32, depth=2, patch_size=8)
    path = tmp_path / "depth2.pth"
    torch.save(small.net.state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as error:
        build("vit_tiny_video", pretrained=path, num_frames=4, img_size=32, depth=3, patch_size=8)
    message = str(error.value)
    assert str(path) in message and "blocks.2.attn.qkv.weight" in message and "missing keys" in message

    wide = tmp_path / "wide.pth"
    torch.save(build("vit_tiny_video", num_frames=4, img_size=32, depth=2, embed_dim=32, patch_size=8).net.state_dict()
               | {"extra.weight": torch.zeros(1)}, wide)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys.*extra\.weight(.|\n)*"
                                                      r"blocks\.0\.norm1\.weight: \(32,\) vs \(64,\)"):
        build("vit_tiny_video", pretrained=wide, num_frames=4, img_size=32, depth=2, patch_size=8)

    with pytest.warns(UserWarning, match=r"missing keys.*blocks\.2"):
        relaxed = build("vit_tiny_video", pretrained=path, num_frames=4, img_size=32, depth=3, patch_size=8,
                        strict=False)
    assert torch.equal(relaxed.net.blocks[1].attn.qkv.weight, small.net.blocks[1].attn.qkv.weight)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build("r3d_18", pretrained=tmp_path / "absent.pth")


def test_torchvision_checkpoint_with_head_loads_into_backbone_net(tmp_path):
    torch.manual_seed(1)
    original = tv_video.mc3_18(weights=None)
    path = tmp_path / "mc3_18.pth"
    torch.save(original.state_dict(), path)
    backbone = build("mc3_18", pretrained=path)
    assert sorted(backbone.load_report.dropped) == ["fc.bias", "fc.weight"]
    assert torch.equal(backbone.net.layer4[1].conv2[0].weight, original.layer4[1].conv2[0].weight)
    # a checkpoint of the wrapper itself ("net." keys) loads like one of the raw network
    wrapper_path = tmp_path / "wrapper.pth"
    torch.save(backbone.state_dict(), wrapper_path)
    assert build("mc3_18", pretrained=wrapper_path).load_report.clean


@pytest.fixture(scope="module")
def swin3d_t():
    return build("swin3d_t", stochastic_depth_prob=0.0)


def test_video_swin_t_forward_backward_at_small_input(swin3d_t):
    backbone = copy.deepcopy(swin3d_t)
    video = torch.randn(1, 3, 4, 32, 32, requires_grad=True)
    features = backbone(video)
    assert features.shape == (1, 768, 2)
    features.square().sum().backward()
    assert video.grad is not None and torch.isfinite(video.grad).all()
    assert all(p.grad is not None for p in backbone.net.features.parameters())


def test_swin_stochastic_depth_option_follows_the_linear_rule():
    backbone = build("swin3d_t", stochastic_depth_prob=0.2)
    rates = [m.p for m in backbone.modules() if isinstance(m, StochasticDepth)]
    assert len(rates) == 12 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert rates[6] == pytest.approx(0.2 * 6 / 11)


def test_video_swin_t_converted_reversible_forward_backward(swin3d_t):
    reference = copy.deepcopy(swin3d_t).double()
    converted = revtal.convert(copy.deepcopy(reference), "dr2net", alpha=0.5, beta=0.5)
    vanilla = revtal.convert(copy.deepcopy(reference), "dr2net", alpha=0.5, beta=0.5, backprop="vanilla")
    assert reversible_stages(converted) and set(reference.state_dict()) == set(converted.state_dict())
    video = torch.randn(1, 3, 2, 32, 32, dtype=torch.float64)
    grads = []
    for model in (converted, vanilla):
        model(video).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-8, atol=1e-10)


def test_convert_acts_on_the_whole_wrapper():
    backbone = build("vit_tiny_video", num_frames=4, img_size=32, patch_size=8)
    keys = list(backbone.state_dict())
    revtal.convert(backbone, "re2")
    stages = reversible_stages(backbone)
    assert [s.stage_name for s in stages] == ["net.blocks"] and list(backbone.state_dict()) == keys


def test_clip_classifier_trains_the_backbone():
    torch.manual_seed(0)
    model = ClipClassifier(build("vit_tiny_video", num_frames=4, img_size=32, patch_size=8, depth=2), num_classes=3)
    video = torch.randn(6, 3, 4, 32, 32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert model(video).shape == (6, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(video), labels)
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert model.backbone.net.blocks[0].attn.qkv.weight.grad is not None
    assert losses[-1] < 0.5 * losses[0], losses
    with pytest.raises(ValueError, match="num_classes"):
        ClipClassifier(model.backbone, 0)


def test_converted_resnet_backbone_keeps_per_stage_intermediates():
    backbone = revtal.convert(build("mc3_18"), "dr2net", alpha=0.5, beta=0.5)
    assert [s.stage_name for s in reversible_stages(backbone)] == [f"net.layer{i}" for i in range(1, 5)]
    video = torch.randn(1, 3, 4, 32, 32)
    final, intermediates = backbone.forward_features(video, return_intermediates=True)
    assert [t.shape[1] for t in intermediates] == [64, 128, 256, 512] and torch.equal(final, intermediates[-1])
    backbone(video).square().sum().backward()
    assert backbone.net.stem[0].weight.grad is not None


def test_every_backbone_declares_the_options_it_takes_with_their_types():
    from revtal.backbones.builder import backbone_options, list_backbones

    for name in list_backbones():
        assert backbone_options(name), name  # each registered backbone declares its options
    vit = backbone_options("vit_tiny_video")
    assert vit["depth"].annotation is int and vit["drop_path_rate"].default == 0.0 and "image_checkpoint" in vit
    assert "num_frames" not in vit and "checkpoint" not in vit  # given by build() itself
    swin = backbone_options("swin3d_t")
    assert "embed_dim" not in swin and swin["stochastic_depth_prob"].default is None  # fixed by swin3d_t / handled
    assert backbone_options("slowfast_r50")["alpha"].annotation is int
    assert set(backbone_options("r3d_18")) == {"num_classes", "zero_init_residual"}
