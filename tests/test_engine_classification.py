"""task: classification end to end: every training mode trains, eval.json holds the accuracies, resume is bit-exact,
a re-pretrained (re2) checkpoint is the pretrained backbone of a TAL recipe, and bad configs fail at load."""

import json

import pytest
import torch

import revtal
from revtal.data.synthetic import generate_clip_dataset
from revtal.engine.classification import ClassificationTrainer
from revtal.engine.config import ConfigError, config_from_dict
from revtal.engine.modes import mode_names


@pytest.fixture(scope="module")
def clips_root(tmp_path_factory):
    return generate_clip_dataset(tmp_path_factory.mktemp("clips"), num_classes=2, train_per_class=3, val_per_class=1,
                                 size=16, duration_range=(2.0, 3.0), progress=False)


def tiny_config(root, out, **values):
    config = config_from_dict({
        "task": "classification",
        "data": {"num_frames": 4, "img_size": 16, "batch_size": 3, "cache_mb": 8},
        "classification": {"train_list": str(root / "train.csv"), "val_list": str(root / "val.csv"),
                           "classes": str(root / "classes.txt"), "test_clips": 2},
        "backbone": {"name": "vit_tiny_video", "options": {"patch_size": 8, "tubelet_size": 2, "depth": 2, "embed_dim": 32},
                     "mode": "conventional", "backprop": "exact",
                     "schedule": {"every": 1, "unit": "iteration", "end_epoch": 1.0},
                     "losa": {"clip_frames": 2, "dim": 32}, "unipt": {"clip_frames": 2},
                     "st_adapter": {"clip_frames": 2}, "aim": {"clip_frames": 2}},
        "optim": {"epochs": 1, "backbone_lr": 1e-3, "head_lr": 1e-3, "warmup_epochs": 0.0},
        "train": {"out_dir": str(out), "log_every": 1},
    }, source="test")
    return config.with_values(values, source="test") if values else config


@pytest.mark.parametrize("mode", mode_names())
def test_every_mode_trains_a_classifier_and_writes_eval_json(clips_root, tmp_path, mode):
    config = tiny_config(clips_root, tmp_path, **{"backbone.mode": mode})
    trainer = ClassificationTrainer(config, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert "head.weight" in moved
    backbone_net = {n for n in moved if n.startswith("backbone.net.") or n.startswith("backbone.backbone.net.")}
    adapters = ("losa", "unipt", "st_adapter", "aim")
    if mode in ("frozen", *adapters):
        assert not backbone_net
    else:
        assert backbone_net, f"{mode}: the backbone did not train"
    if mode in adapters:
        assert any(n.startswith("backbone.") for n in moved), f"{mode}: the adapters did not train"
    result = json.loads((tmp_path / "eval.json").read_text())
    assert {"top1", "top5", "num_classes", "mean_class_accuracy", "per_class"} <= set(result)
    assert result["num_classes"] == 2 and result["num_videos"] == 2 and result["top5"] == 1.0
    assert set(result["per_class"]) == {"red_up", "red_down"} and result["views"] == {"clips": 2, "crops": 1}
    stages = revtal.reversible_stages(trainer.model)
    expected = {"checkpoint": (1.0, 0.0), "re2": (0.0, 1.0), "hard": (config.backbone.alpha, config.backbone.beta),
                "scratch": (config.backbone.schedule.alpha_end, config.backbone.schedule.beta_end)}
    if mode == "dr2net":  # two steps of a schedule that ends after one epoch: half-way from (1, 0.1) to (0.3, 0.7)
        schedule = config.backbone.schedule
        assert [(s.alpha, s.beta) for s in stages] == [pytest.approx(
            ((schedule.alpha0 + schedule.alpha_end) / 2, (schedule.beta0 + schedule.beta_end) / 2), abs=1 / 256)]
        assert stages[0].backprop == "exact"
    elif mode in expected:
        assert stages and all((s.alpha, s.beta) == pytest.approx(expected[mode], abs=1 / 256) for s in stages)
        assert stages[0].backprop == {"checkpoint": "checkpoint", "re2": "reversible"}.get(mode, "exact")
    else:
        assert not stages


def test_dr2net_float_backprop_follows_the_schedule(clips_root, tmp_path):
    config = tiny_config(clips_root, tmp_path, **{"backbone.mode": "dr2net", "backbone.backprop": "reversible",
                                                  "backbone.schedule.beta0": 0.5, "optim.epochs": 2})
    trainer = ClassificationTrainer(config, progress=False)
    history = trainer.fit()
    assert revtal.reversible_stages(trainer.model)[0].backprop == "reversible"
    assert history[0].alpha > history[1].alpha and history[0].beta < history[1].beta  # half-way, then the end point
    assert (history[1].alpha, history[1].beta) == pytest.approx((0.3, 0.7), abs=1e-6)
    # the checkpoint rebuilds the trained classifier (weights and coefficients): the same accuracy again
    from revtal.engine.classification import evaluate_checkpoint

    again = evaluate_checkpoint(tmp_path / "last.pt", out_dir=tmp_path / "again", progress=False)
    assert again == json.loads((tmp_path / "eval.json").read_text())


def test_resume_continues_bit_exactly_with_mixup_cutmix_and_drop_path(clips_root, tmp_path):
    recipe = {"optim.epochs": 2, "classification.mixup_alpha": 0.8, "classification.cutmix_alpha": 1.0,
              "classification.label_smoothing": 0.1, "optim.layer_decay": 0.75,
              "backbone.options": {"patch_size": 8, "tubelet_size": 2, "depth": 2, "embed_dim": 32,
                                   "drop_path_rate": 0.2}}
    straight = ClassificationTrainer(tiny_config(clips_root, tmp_path / "a", **recipe), progress=False)
    straight.fit()
    interrupted = ClassificationTrainer(tiny_config(clips_root, tmp_path / "b", **recipe), progress=False)
    interrupted.fit(max_epochs=1)
    resumed = ClassificationTrainer(tiny_config(clips_root, tmp_path / "b", **recipe), resume=tmp_path / "b" / "last.pt",
                                    progress=False)
    assert resumed.start_epoch == 1
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / "eval.json").read_text()) == json.loads((tmp_path / "b" / "eval.json").read_text())


def test_re2_repretrained_checkpoint_is_the_pretrained_backbone_of_a_tal_re2_recipe(clips_root, tmp_path):
    from revtal.engine.model import build_model

    config = tiny_config(clips_root, tmp_path / "cls", **{"backbone.mode": "re2", "optim.epochs": 1})
    trainer = ClassificationTrainer(config, progress=False)
    trainer.fit()
    best = tmp_path / "cls" / "best.pt"
    assert best.exists()
    tal = config_from_dict({
        "data": {"num_frames": 4, "img_size": 16},
        "backbone": {"name": "vit_tiny_video", "options": {"patch_size": 8, "tubelet_size": 2, "depth": 2, "embed_dim": 32},
                     "mode": "re2", "pretrained": str(best)},
        "localizer": {"options": {"embed_dim": 32, "head_dim": 32, "num_heads": 2, "window_size": 3,
                                  "num_branch_blocks": 1, "regression_ranges": [[0, 2], [2, 10000]]}},
    }, source="test")
    model = build_model(tal, num_classes=3)
    trained = {k[len("backbone."):]: v for k, v in trainer.model.state_dict().items() if k.startswith("backbone.")}
    loaded = model.extractor.state_dict()
    assert set(trained) == set(loaded) and all(torch.equal(trained[k], loaded[k]) for k in trained)
    assert [(s.alpha, s.beta) for s in revtal.reversible_stages(model.extractor)] == [(0.0, 1.0)]


@pytest.mark.parametrize("values, message", [
    ({"localizer.options.embed_dim": 32}, "localizer.options.embed_dim is a TAL option"),
    ({"data.annotations": "x.json"}, "data.annotations is a TAL option"),
    ({"classification.val_list": ""}, "set both classification.train_list and classification.val_list"),
    ({"backbone.mode": "losa", "backbone.losa.clip_frames": 3}, "must be a multiple of it"),
    ({"classification.test_crops": 2}, "test_crops must be 1 or 3"),
    ({"optim.layer_decay": 0.0}, r"optim.layer_decay must be in \(0, 1\]"),
])
def test_options_the_task_does_not_take_fail_at_load(clips_root, tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(clips_root, tmp_path, **values)


def test_classification_options_are_refused_by_a_tal_recipe():
    with pytest.raises(ConfigError, match="classification.mixup_alpha is a classification option, but task is 'tal'"):
        config_from_dict({"classification": {"mixup_alpha": 0.8}})


def test_k400_re2_repretraining_recipe_feeds_the_thumos_re2tal_recipe(clips_root, tmp_path):
    """The two commands of Re²TAL's recipe, shrunk: one step of the re-pretraining config (Swin-T, re2), then the
    TAL recipe builds its backbone from that run's best.pt."""
    from pathlib import Path

    from revtal.engine.config import load_config
    from revtal.engine.model import build_model

    configs = Path(__file__).resolve().parents[1] / "configs"
    shrink = [f"classification.train_list={clips_root / 'train.csv'}", f"classification.val_list={clips_root / 'val.csv'}",
              f"classification.root={clips_root}", "backbone.pretrained=''", "data.num_frames=4", "data.img_size=32",
              "data.batch_size=6", "data.num_workers=0", "classification.test_clips=1", "classification.test_crops=1",
              "classification.frame_interval=1", "optim.epochs=1", "optim.amp=none", "eval.every=1",
              f"train.out_dir={tmp_path / 'k400'}"]
    config = load_config(configs / "k400_swin3d_t_re2_repretrain.yaml", shrink)
    assert config.backbone.mode == "re2" and config.backbone.name == "swin3d_t"
    trainer = ClassificationTrainer(config, progress=False)
    trainer.fit()
    assert trainer.step == 1
    tal = load_config(configs / "thumos_re2tal.yaml", [f"backbone.pretrained={tmp_path / 'k400' / 'best.pt'}",
                                                        "data.num_frames=4", "data.img_size=32", "optim.amp=none"])
    model = build_model(tal, num_classes=20)
    trained = {k[len("backbone."):]: v for k, v in trainer.model.state_dict().items() if k.startswith("backbone.")}
    loaded = model.extractor.state_dict()
    assert set(trained) == set(loaded) and all(torch.equal(trained[k], loaded[k]) for k in trained)


def test_revtal_train_and_eval_commands_take_a_classification_recipe(clips_root, tmp_path, capsys):
    from revtal.cli import main as cli_main

    recipe = tmp_path / "recipe.yaml"
    import yaml

    config = tiny_config(clips_root, tmp_path / "run")
    recipe.write_text(yaml.safe_dump(config.to_dict()))
    assert cli_main(["train", str(recipe)]) == 0
    assert "final top-1" in capsys.readouterr().out
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text()) == json.loads((tmp_path / "run" / "eval.json").read_text())


def test_revtal_synth_clips_writes_lists_a_recipe_reads(tmp_path):
    from revtal.cli import main as cli_main
    from revtal.data.cliplists import load_clip_list

    assert cli_main(["synth", "--out", str(tmp_path / "s"), "--clips", "3", "--classes", "2", "--size", "16",
                     "--min-duration", "2", "--max-duration", "3"]) == 0
    clips = load_clip_list(tmp_path / "s" / "train.csv", classes=tmp_path / "s" / "classes.txt")
    assert clips.counts() == [3, 3] and len(load_clip_list(tmp_path / "s" / "val.csv").entries) == 2
