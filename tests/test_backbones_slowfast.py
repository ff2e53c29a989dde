"""pytorchvideo SlowFast through revtal's backbone interface: one clip or the [slow, fast] pair, published
checkpoint keys load strictly before and after conversion, both pathways' residual blocks reversible with the
stage-entry blocks and lateral fusions ordinary, the trainer runs it, and the recipe config loads."""

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("pytorchvideo")

import revtal  # noqa: E402
from revtal.backbones import build  # noqa: E402
from revtal.backbones.slowfast import SlowFastBackbone, slowfast  # noqa: E402
from revtal.reversible import reversible_stages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tiny(**opts):
    torch.manual_seed(0)
    return build("slowfast_r50", stem_dim_outs=(8, 1), **opts)


def test_one_clip_or_the_pathway_pair_give_the_same_features():
    backbone = tiny().eval()
    video = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        from_clip = backbone.forward_features(video)
        from_pair = backbone.forward_features([video[:, :, ::4], video])
        pooled = backbone(video)
    # slow 256 + fast 32 channels, time at the slow rate (8 / alpha), space / 32
    assert from_clip.shape == (1, 288, 2, 1, 1) and backbone.out_channels == 288 and backbone.temporal_stride == 4
    assert torch.equal(from_clip, from_pair) and pooled.shape == (1, 288, 2)
    with pytest.raises(ValueError, match="divisible by alpha=4"):
        backbone(torch.randn(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="alpha=4 times the slow clip"):
        backbone.forward_features([video[:, :, ::2], video])


def test_published_checkpoint_keys_load_strictly_before_and_after_conversion(tmp_path):
    # the published Kinetics R50 (SLOWFAST_8x8_R50.pyth) is {"model_state": create_slowfast(model_depth=50) keys};
    # on the meta device: keys and shapes only, no 34M-parameter file
    published = tmp_path / "SLOWFAST_8x8_R50.pyth"
    with torch.device("meta"):
        torch.save({"model_state": slowfast(50).state_dict()}, published)
        backbone = build("slowfast_r50")
    report = backbone.load_checkpoint(published, strict=True)
    assert set(report.dropped) == {"blocks.6.proj.weight", "blocks.6.proj.bias"}  # the Kinetics classifier
    keys = list(backbone.state_dict())
    revtal.convert(backbone, "re2")
    assert list(backbone.state_dict()) == keys
    backbone.load_checkpoint(published, strict=True)
    layout = [(s.stage_name, sorted(s.plain), len(s.blocks())) for s in reversible_stages(backbone)]
    # R50: 3, 4, 6, 3 blocks per stage in both pathways; each stage's first block (projection shortcut) ordinary,
    # the lateral fast->slow fusions are not residual blocks and stay ordinary layers outside the stages
    assert layout == [
        (f"net.blocks.{stage}.multipathway_blocks.{pathway}.res_blocks", [0], depth)
        for stage, depth in zip((1, 2, 3, 4), (3, 4, 6, 3)) for pathway in (0, 1)
    ]


def test_converted_slowfast_is_the_original_at_alpha1_beta0_in_train_mode():
    reference = tiny().train()
    converted = revtal.convert(copy.deepcopy(reference), "original")
    video = torch.randn(2, 3, 4, 16, 16)
    assert torch.equal(reference(video), converted(video))


def test_trainer_runs_a_reversible_slowfast(tmp_path):
    from revtal.engine.datasets import resolve_dataset
    from revtal.engine.trainer import Trainer
    from tests.test_engine_trainer import tiny_config

    config = tiny_config(tmp_path / "run", backbone__name="slowfast_r50",
                         backbone__options={"stem_dim_outs": [8, 1]}, backbone__mode="re2",
                         backbone__backprop="reversible")
    config = resolve_dataset(config, tmp_path / "data")
    trainer = Trainer(config, progress=False)
    assert len(reversible_stages(trainer.model)) == 8
    history = trainer.fit()
    assert len(history) == 1 and 0.0 <= history[0].metrics["average_mAP"] <= 1.0


def test_recipe_config_loads():
    from revtal.engine.config import load_config

    config = load_config(ROOT / "configs" / "anet_slowfast_r50_re2.yaml")
    assert config.backbone.name == "slowfast_r50" and config.backbone.mode == "re2"
