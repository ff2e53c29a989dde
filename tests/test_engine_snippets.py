"""data.mode: snippets — the backbone runs clip by clip in every mode that trains it, one feature per clip, and each
mode's memory guarantee holds over all the clips of a video."""

import json

import pytest
import torch

from revtal.data.annotations import load_annotations
from revtal.data.decoding import probe_video
from revtal.engine.config import ConfigError
from revtal.engine.datasets import evaluation_dataset
from revtal.engine.inference import Predictor
from revtal.engine.model import build_model
from revtal.engine.trainer import Trainer
from revtal.utils.memory import saved_bytes
from tests.data_fixtures import counter_video
from tests.test_engine_trainer import _config, dataset_root, tiny_config  # noqa: F401 (fixture)

SNIPPETS = {"data__mode": "snippets", "data__clip_frames": 4, "data__clip_stride": 4}


@pytest.mark.parametrize("mode", ["conventional", "checkpoint", "re2", "hard", "dr2net", "scratch"])
def test_snippets_mode_trains_the_backbone_clip_by_clip_in_every_mode(dataset_root, tmp_path, mode):  # noqa: F811
    config = _config(dataset_root, tmp_path, backbone__mode=mode, **SNIPPETS)
    trainer = Trainer(config, progress=False)
    assert trainer.model.clips and trainer.model.temporal_stride == 1
    before = {n: p.detach().clone() for n, p in trainer.model.extractor.named_parameters()}
    history = trainer.fit()
    assert 0.0 <= history[0].metrics["average_mAP"] <= 1.0
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.extractor.named_parameters())


def test_snippets_mode_gives_one_feature_per_clip(tmp_path):
    model = build_model(tiny_config(tmp_path, **SNIPPETS), num_classes=2)
    clips = torch.randn(2, 5, 3, 4, 16, 16)
    feats, mask = model.features(clips, torch.ones(2, 5, dtype=torch.bool))
    assert feats.shape == (2, model.extractor.out_channels, 5) and mask.shape == (2, 5)
    # each clip's feature is the backbone's on that clip alone, averaged over its time steps
    model.eval()
    with torch.no_grad():
        alone = model.extractor(clips[:, 3]).mean(-1)
        feats, _ = model.features(clips, torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(feats[..., 3], alone)


def test_losa_with_snippets_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="backbone.mode: losa cuts the video into clips itself"):
        tiny_config(tmp_path, backbone__mode="losa", **SNIPPETS)


def _saved_per_video(tmp_path, mode: str, clips: int, **overrides) -> int:
    torch.manual_seed(0)
    config = tiny_config(tmp_path, backbone__mode=mode, **SNIPPETS, **overrides)
    model = build_model(config, num_classes=2).train()
    video = torch.randn(1, clips, 3, 4, 16, 16)
    mask = torch.ones(1, clips, dtype=torch.bool)
    return saved_bytes(lambda: model.features(video, mask)[0], model, exclude=[video])


@pytest.mark.parametrize("mode,overrides", [("re2", {}), ("dr2net", {"backbone__backprop": "exact"}),
                                            ("dr2net", {"backbone__backprop": "reversible"})])
def test_a_memory_free_backbone_keeps_only_each_clips_stage_outputs(tmp_path, mode, overrides):
    # ViT (depth 8, 32 channels) on 2×2×2 = 8 tokens per clip: a stage output is 8 × 32 floats (1 KiB) per stream
    options = {"backbone__options": {"patch_size": 8, "tubelet_size": 2, "depth": 8, "embed_dim": 32}}
    one, eight = (_saved_per_video(tmp_path, mode, n, **options, **overrides) for n in (1, 8))
    conventional = _saved_per_video(tmp_path, "conventional", 1, **options)
    checkpoint = _saved_per_video(tmp_path, "checkpoint", 1, **options)
    per_clip = (eight - one) / 7
    # what a clip adds: its stage outputs (two streams; exact: float x_n + the buffer), the patch embedding's and
    # the final norm's inputs, and the pooled feature: a few KiB, far below what checkpointing keeps per clip
    assert per_clip <= 6 * 1024 + 1024, per_clip
    assert per_clip < 0.6 * checkpoint < conventional


def test_detect_on_a_video_file_runs_a_snippets_model_on_the_clips_evaluation_gives_it(tmp_path):
    """``revtal detect`` on one file slices it as the evaluation dataset slices the same video (all its clips, the
    last ones repeating the final frame), so a snippets model detects the same segments either way."""
    video = counter_video(tmp_path / "videos" / "clip.mp4", num_frames=26, fps=8.0, size=32)
    duration = probe_video(video).duration
    annotations = tmp_path / "gt.json"
    annotations.write_text(json.dumps({"classes": ["a", "b"], "database": {"clip": {
        "subset": "validation", "duration": duration, "annotations": [{"segment": [0.5, 1.5], "label": "a"}]}}}))
    config = tiny_config(tmp_path, data__annotations=str(annotations), data__video_dir=str(video.parent),
                         data__val_subset="validation", **SNIPPETS)
    torch.manual_seed(0)
    predictor = Predictor.from_config(config, ["a", "b"])
    seen = []
    predictor.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))

    detected = predictor.detect_file(video)
    evaluated = predictor.predict(evaluation_dataset(config, load_annotations(annotations)))

    # 26 frames at 8 fps in clips of 4 every 4 frames: 7 clips, the last holding frames 24, 25, 25, 25
    assert seen[0].shape == (1, 7, 3, 4, 16, 16)
    assert torch.equal(seen[0], seen[1])
    assert detected["duration"] == duration and detected["detections"]
    assert detected["detections"] == evaluated["clip"]
