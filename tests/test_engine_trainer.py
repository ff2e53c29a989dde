"""The trainer on a tiny synthetic dataset: every mode runs, resume is exact, DDP runs, detect writes its files."""

import json
import os
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp

import revtal

from revtal.cli import main as cli_main
from revtal.engine.config import config_from_dict
from revtal.engine.datasets import resolve_dataset
from revtal.engine.modes import mode_names
from revtal.engine.trainer import Trainer


def tiny_config(out, **overrides):
    data = {
        "num_frames": 8, "img_size": 16, "batch_size": 2, "cache_mb": 16,
        "synthetic": {"videos": 8, "classes": 2, "seed": 3, "size": 16, "fps": 2.0, "min_duration": 6.0,
                      "max_duration": 8.0},
    }
    config = {
        "data": data,
        "backbone": {"name": "vit_tiny_video", "options": {"patch_size": 8, "tubelet_size": 2, "depth": 2, "embed_dim": 32},
                     "mode": "dr2net", "backprop": "exact",
                     "schedule": {"every": 1, "unit": "iteration", "end_epoch": 1.0},
                     "losa": {"clip_frames": 4, "dim": 32}, "unipt": {"clip_frames": 4},
                     "st_adapter": {"clip_frames": 4}, "aim": {"clip_frames": 4}},
        "localizer": {"options": {"embed_dim": 32, "head_dim": 32, "num_heads": 2, "window_size": 3,
                                  "num_branch_blocks": 1, "regression_ranges": [[0, 2], [2, 10000]], "drop_path": 0.0}},
        "optim": {"epochs": 1, "backbone_lr": 1e-3, "head_lr": 1e-3, "warmup_epochs": 0.0},
        "eval": {"tiou": [0.3, 0.5, 0.7]},
        "train": {"out_dir": str(out), "log_every": 1},
    }
    config = config_from_dict(config, source="test")
    return config.with_values({key.replace("__", "."): value for key, value in overrides.items()}, source="test")


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tal")
    config = resolve_dataset(tiny_config(root), root)
    return root, config.data.annotations, config.data.video_dir


def _config(dataset_root, out, **overrides):
    _, annotations, video_dir = dataset_root
    return tiny_config(out, **{"data__annotations": annotations, "data__video_dir": video_dir, **overrides})


@pytest.mark.parametrize("mode", mode_names())
def test_one_epoch_per_mode(dataset_root, tmp_path, mode):
    config = _config(dataset_root, tmp_path, backbone__mode=mode)
    trainer = Trainer(config, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    history = trainer.fit()
    assert len(history) == 1 and 0.0 <= history[0].metrics["average_mAP"] <= 1.0
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    backbone_moved = any(n.startswith("extractor.") and ".adapter" not in n for n in moved if "backbone" in n or n.startswith("extractor.net"))
    assert any(n.startswith("localizer.") for n in moved)
    if mode in ("frozen", "losa", "unipt", "st_adapter", "aim"):  # the backbone's own weights stay
        assert not any(n.startswith("extractor.net.") or n.startswith("extractor.backbone.") for n in moved)
    else:
        assert backbone_moved, f"{mode}: the backbone did not train"
    assert (tmp_path / "last.pt").exists() and (tmp_path / "metrics.csv").exists()
    assert json.loads((tmp_path / "eval.json").read_text())["tiou"] == [0.3, 0.5, 0.7]
    # the checkpoint rebuilds, through the same mode object, into the model that was trained
    from revtal.engine.inference import Predictor

    rebuilt = Predictor.from_checkpoint(tmp_path / "last.pt").model
    assert type(rebuilt.mode) is type(trainer.model.mode)
    trained_state = trainer.model.state_dict()
    assert all(torch.equal(v, trained_state[k]) for k, v in rebuilt.state_dict().items())
    assert [(s.alpha, s.beta, s.backprop) for s in revtal.reversible_stages(rebuilt)] == \
        [(s.alpha, s.beta, s.backprop) for s in revtal.reversible_stages(trainer.model)]


def test_resume_continues_bit_for_bit(dataset_root, tmp_path):
    straight = Trainer(_config(dataset_root, tmp_path / "a", optim__epochs=2), progress=False)
    straight.fit()
    interrupted = Trainer(_config(dataset_root, tmp_path / "b", optim__epochs=2), progress=False)
    interrupted.fit(max_epochs=1)
    resumed = Trainer(_config(dataset_root, tmp_path / "b", optim__epochs=2), resume=tmp_path / "b" / "last.pt",
                      progress=False)
    assert resumed.start_epoch == 1
    resumed.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.coefficients.last_applied == resumed.coefficients.last_applied


def _metrics_without_timings(out) -> list[str]:
    return [row for row in (out / "metrics.csv").read_text().splitlines() if "time" not in row]


@pytest.mark.parametrize("mode", ["conventional", "frozen"])
def test_two_runs_with_two_threads_give_identical_metrics(tmp_path, mode):
    # each run generates its own dataset, as two clean clones running `revtal demo` do
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for name in ("a", "b"):
            # the demo's video size and rate: the old x264 settings encoded these differently from run to run
            config = tiny_config(tmp_path / name, backbone__mode=mode).with_values({
                "data.synthetic.size": 32, "data.synthetic.fps": 4.0, "data.synthetic.min_duration": 16.0,
                "data.synthetic.max_duration": 32.0})
            trainer = Trainer(resolve_dataset(config, tmp_path / name), progress=False)
            trainer.fit()
            runs.append(trainer)
    finally:
        torch.set_num_threads(threads)
    assert _metrics_without_timings(tmp_path / "a") == _metrics_without_timings(tmp_path / "b")
    assert (tmp_path / "a" / "eval.json").read_text() == (tmp_path / "b" / "eval.json").read_text()
    for (name, a), b in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b), name


def test_deterministic_training_sets_every_backend_flag(dataset_root, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.mkldnn.deterministic)
    try:
        trainer = Trainer(_config(dataset_root, tmp_path, backbone__mode="dr2net", train__deterministic=True),
                          progress=False)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.mkldnn.deterministic
        assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert trainer.fit()[-1].metrics["average_mAP"] >= 0.0  # every CPU kernel it uses has a deterministic path
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.mkldnn.deterministic = before[1], before[2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, config):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from revtal.engine import distributed

    trainer = Trainer(config, progress=False)
    trainer.fit()
    torch.save({k: v for k, v in trainer.model.state_dict().items()}, f"{config.train.out_dir}/rank{rank}.pt")
    distributed.cleanup()


def test_ddp_two_processes(dataset_root, tmp_path):
    config = _config(dataset_root, tmp_path)
    mp.spawn(_ddp_worker, args=(2, _free_port(), config), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key  # replicas stay identical
    assert (tmp_path / "last.pt").exists() and (tmp_path / "eval.json").exists()


@pytest.mark.parametrize("data_mode", [{}, {"data__mode": "snippets", "data__clip_frames": 4, "data__clip_stride": 4}],
                         ids=["frames", "snippets"])
def test_detect_writes_json_and_png(dataset_root, tmp_path, data_mode):
    root, annotations, video_dir = dataset_root
    config = _config(dataset_root, tmp_path / "run", **data_mode)
    Trainer(config, progress=False).fit()
    video = sorted(p for p in os.listdir(video_dir) if p.endswith(".mp4"))[0]
    code = cli_main(["detect", os.path.join(video_dir, video), "--checkpoint", str(tmp_path / "run" / "last.pt"),
                     "--out", str(tmp_path / "det"), "--gt", annotations, "--min-score", "0"])
    assert code == 0
    stem = video[:-4]
    result = json.loads((tmp_path / "det" / f"{stem}.json").read_text())
    assert result["duration"] > 0 and isinstance(result["detections"], list)
    for d in result["detections"]:
        assert 0 <= d["segment"][0] < d["segment"][1] <= result["duration"] + 1e-6
    assert (tmp_path / "det" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"


def test_first_step_verifies_exact_reconstruction(dataset_root, tmp_path, monkeypatch):
    from revtal.reversible.exact import ExactArithmetic

    config = _config(dataset_root, tmp_path)
    trainer = Trainer(config, progress=False)
    original = ExactArithmetic.recover_input

    def flaky(self, x, y, residue, c):  # a non-deterministic recompute, as unseeded CUDA kernels could give
        return original(self, x, y, residue, c) + 1

    monkeypatch.setattr(ExactArithmetic, "recover_input", flaky)
    with pytest.raises(RuntimeError, match="did not reconstruct the input of stage .* bitwise"):
        trainer.fit()


def test_eval_and_extract_commands(dataset_root, tmp_path, capsys):
    import numpy as np

    from revtal.data.annotations import load_annotations
    from revtal.engine.config import dump_config
    from revtal.engine.datasets import video_dataset

    config = _config(dataset_root, tmp_path / "run", backbone__mode="conventional", optim__ema=True,
                     optim__ema_decay=0.5)
    trainer = Trainer(config, progress=False)
    trained = trainer.fit()[-1].metrics["average_mAP"]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    recipe = tmp_path / "recipe.yaml"
    dump_config(config, recipe)
    assert cli_main(["eval", str(recipe), "--checkpoint", str(tmp_path / "run" / "last.pt"),
                     "--out", str(tmp_path / "eval")]) == 0
    assert f"average mAP {100 * trained:.2f}" in capsys.readouterr().out  # same (EMA) weights, same score
    assert not (tmp_path / "eval" / "config.yaml").exists()  # evaluation is not a training run
    assert (tmp_path / "eval" / "eval.json").exists()

    # the trained backbone, on every video (also those the training subset would drop), with evaluation transforms
    for run in ("a", "b"):
        assert cli_main(["extract", str(recipe), "--checkpoint", str(tmp_path / "run" / "last.pt"),
                         "--features", str(tmp_path / run), "--out", str(tmp_path / "x")]) == 0
    annotations = load_annotations(config.data.annotations)
    files = sorted((tmp_path / "a").glob("*.npy"))
    assert [f.stem for f in files] == sorted(annotations.videos)
    for f in files:
        assert np.array_equal(np.load(f), np.load(tmp_path / "b" / f.name)), f.name  # two runs, identical
    item = video_dataset(config, annotations, subset=None)[0]
    with torch.no_grad():
        expected = trainer.evaluation_model().extractor.eval()(item["video"][None])[0].numpy()
        last_step = trainer.model.extractor.eval()(item["video"][None])[0].numpy()
    assert np.allclose(np.load(tmp_path / "a" / f"{item['video_id']}.npy"), expected, rtol=0, atol=1e-6)
    assert not np.allclose(last_step, expected)  # the EMA weights, not the last step's


def test_bf16_autocast_accumulation_and_ema(dataset_root, tmp_path):
    config = _config(dataset_root, tmp_path, optim__amp="bf16", optim__accumulate=2, optim__ema=True)
    trainer = Trainer(config, progress=False)
    history = trainer.fit()
    assert torch.isfinite(torch.tensor(history[-1].loss))
    assert trainer.step == trainer.iters_per_epoch  # one optimizer step per two batches
    assert trainer.ema.updates == trainer.step
    ema_weights = trainer.evaluation_model().state_dict()
    assert any(not torch.equal(ema_weights[k], v) for k, v in trainer.model.state_dict().items()
               if v.dtype.is_floating_point)


def test_frozen_training_on_extracted_features(dataset_root, tmp_path):
    import numpy as np

    from revtal.backbones import build
    from revtal.data.annotations import load_annotations
    from revtal.engine.config import dump_config
    from revtal.engine.datasets import video_dataset

    torch.manual_seed(0)
    backbone = build("vit_tiny_video", num_frames=8, img_size=16, patch_size=8, tubelet_size=2, depth=2, embed_dim=32)
    torch.save(backbone.net.state_dict(), tmp_path / "backbone.pt")
    # one more video, in a subset of its own and without actions: neither the training nor the validation subset
    _, annotations_file, video_dir = dataset_root
    database = json.loads(open(annotations_file).read())
    videos = tmp_path / "videos"
    shutil.copytree(video_dir, videos)
    first = sorted(database["database"])[0]
    shutil.copy(videos / f"{first}.mp4", videos / "unlabelled.mp4")
    database["database"]["unlabelled"] = {**database["database"][first], "subset": "test", "annotations": []}
    (tmp_path / "annotations.json").write_text(json.dumps(database))
    config = _config(dataset_root, tmp_path / "run", backbone__mode="dr2net",
                     backbone__pretrained=str(tmp_path / "backbone.pt"),
                     data__annotations=str(tmp_path / "annotations.json"), data__video_dir=str(videos))
    recipe = tmp_path / "recipe.yaml"
    dump_config(config, recipe)
    assert cli_main(["extract", str(recipe), "--features", str(tmp_path / "features"), "--out", str(tmp_path / "x")]) == 0
    annotations = load_annotations(config.data.annotations)
    assert sorted(f.stem for f in (tmp_path / "features").glob("*.npy")) == sorted(annotations.videos)
    # the pretrained backbone as it is (not the recipe's Dr²Net conversion) on an evaluation-transformed video
    item = video_dataset(config, annotations, subset=None)[1]
    with torch.no_grad():
        expected = backbone.eval()(item["video"][None])[0].numpy()
    assert np.array_equal(np.load(tmp_path / "features" / f"{item['video_id']}.npy"), expected)
    features = _config(dataset_root, tmp_path / "feat", backbone__mode="frozen",
                       data__features_dir=str(tmp_path / "features"), data__annotations=str(tmp_path / "annotations.json"))
    trainer = Trainer(features, progress=False)
    assert trainer.model.extractor.out_channels == 32 and trainer.model.temporal_stride == 1
    metrics = trainer.fit()[-1].metrics
    assert 0.0 <= metrics["average_mAP"] <= 1.0
    with pytest.raises(Exception, match="needs backbone.mode: frozen"):
        bad = tiny_config(tmp_path / "bad", backbone__mode="dr2net", data__features_dir="x")
        del bad


def test_trainer_writes_no_dataset_and_refuses_a_config_without_one(tmp_path):
    with pytest.raises(ValueError, match="data.annotations is empty.*resolve_dataset"):
        Trainer(tiny_config(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()  # nothing written: no dataset, no config.yaml


def test_saved_config_is_the_whole_job(tmp_path):
    from revtal.engine.config import load_config

    # no dataset configured: the synthetic one is generated and named before the trainer sees the config
    config = resolve_dataset(tiny_config(tmp_path / "run"), tmp_path / "run")
    trainer = Trainer(config, progress=False)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved == trainer.config
    assert saved.data.annotations and saved.data.video_dir
    assert resolve_dataset(saved, tmp_path / "elsewhere") == saved  # re-running it uses the same data


def test_auto_end_schedule_from_yaml_is_calibrated_before_training(dataset_root, tmp_path):
    # a tolerance every point meets: the end point is the path's first point, the start, held for the whole run
    config = _config(dataset_root, tmp_path, backbone__schedule={"end": "auto", "tolerance": 1e30, "curvature": 2.0,
                                                                 "policy": "exponential", "every": 1,
                                                                 "unit": "iteration", "end_epoch": 1.0,
                                                                 "calibrate_points": 3})
    trainer = Trainer(config, progress=False)
    assert trainer.coefficients.curvature == 2.0 and trainer.coefficients.resolved_end is None
    history = trainer.fit()
    assert trainer.coefficients.resolved_end == (1.0, 0.1)
    assert len(trainer.coefficients.report.measured) == 1
    assert (history[-1].alpha, history[-1].beta) == (1.0, 13 / 128)  # β in use: the nearest dyadic


def test_pretrained_checkpoint_layout_is_inferred_in_training(dataset_root, tmp_path):
    from revtal.backbones import build

    # learned position embedding, layer scale and no fc_norm: none of them what the recipe's options build
    donor = build("vit_tiny_video", num_frames=8, img_size=16, patch_size=8, tubelet_size=2, depth=2, embed_dim=32,
                  pos_embed="learned", init_values=0.5, use_mean_pooling=False)
    torch.nn.init.normal_(donor.net.pos_embed)
    torch.save(donor.net.state_dict(), tmp_path / "backbone.pt")
    trainer = Trainer(_config(dataset_root, tmp_path / "run", backbone__mode="dr2net",
                              backbone__pretrained=str(tmp_path / "backbone.pt")), progress=False)
    loaded = trainer.model.extractor.net.state_dict()
    for key, value in donor.net.state_dict().items():
        assert torch.equal(loaded[key], value), key
    trainer.fit()
    # and the trained model rebuilds from its checkpoint (whose config still names the default layout)
    from revtal.engine.inference import Predictor

    predictor = Predictor.from_checkpoint(tmp_path / "run" / "last.pt")
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(predictor.model.state_dict()[key], value), key
    stage = revtal.reversible_stages(predictor.model)[0]
    assert (stage.alpha, stage.beta) == tuple(trainer.coefficients.last_applied.values())[:2]


# ------------------------------------------------------------------------------------ runs are never destroyed


def _recipe(dataset_root, tmp_path, **overrides):
    from revtal.engine.config import dump_config

    recipe = tmp_path / "recipe.yaml"
    dump_config(_config(dataset_root, tmp_path / "run", backbone__mode="conventional", **overrides), recipe)
    return recipe


def _snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and "eval" not in p.relative_to(directory).parts[:1]}


def _one_error_line(capsys, command):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"revtal {command}: error: "), lines
    return lines[0]


def test_train_refuses_an_existing_run_and_eval_writes_its_own_directory(dataset_root, tmp_path, capsys, monkeypatch):
    import stat

    monkeypatch.delenv("REVTAL_DEBUG", raising=False)
    recipe, run = _recipe(dataset_root, tmp_path), tmp_path / "run"
    old_umask = os.umask(0o022)
    try:
        assert cli_main(["train", str(recipe)]) == 0
    finally:
        os.umask(old_umask)
    assert all(stat.S_IMODE((run / name).stat().st_mode) == 0o644 for name in ("best.pt", "last.pt", "predictions.json"))
    before = _snapshot(run)
    capsys.readouterr()
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2"]) == 2
    line = _one_error_line(capsys, "train")
    assert f"{run} already holds a training run" in line and f"--resume {run / 'last.pt'}" in line and "--overwrite" in line
    assert _snapshot(run) == before

    # eval: the run's own config, its own output directory, nothing of the run touched
    assert cli_main(["eval", "--checkpoint", str(run / "best.pt")]) == 0
    assert f"in {run / 'eval' / 'best'}" in capsys.readouterr().out
    assert (run / "eval" / "best" / "eval.json").exists() and (run / "eval" / "best" / "predictions.json").exists()
    assert _snapshot(run) == before
    assert cli_main(["eval", "--checkpoint", str(run / "best.pt")]) == 2
    assert "already holds an evaluation" in _one_error_line(capsys, "eval")
    assert cli_main(["eval", "--checkpoint", str(run / "best.pt"), "--overwrite"]) == 0
    assert cli_main(["extract", "--checkpoint", str(run / "best.pt"), str(recipe), "--features", str(tmp_path / "f")]) == 0
    capsys.readouterr()
    assert cli_main(["extract", "--checkpoint", str(run / "best.pt"), str(recipe), "--features", str(tmp_path / "f")]) == 2
    assert "already holds feature files" in _one_error_line(capsys, "extract")
    assert _snapshot(run) == before

    assert cli_main(["train", str(recipe), "--overwrite"]) == 0  # replaced on request
    assert not (run / "eval").exists()  # evaluations of the replaced run go with it
    assert len(list((run / "tensorboard").iterdir())) == 1  # a fresh log, not appended to
    assert (run / "metrics.csv").read_bytes().count(b"\n") == before["metrics.csv"].count(b"\n")


def test_resume_restores_the_run_config_and_refuses_silent_changes(dataset_root, tmp_path, capsys, monkeypatch):
    from revtal.engine.run_state import TrainingCheckpoint

    monkeypatch.delenv("REVTAL_DEBUG", raising=False)
    recipe, run = _recipe(dataset_root, tmp_path), tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--set", "data.batch_size=4"]) == 0
    stray = run / ".last.pt.4194999.abcdefgh.tmp"  # left by a writer killed mid-write (no such process)
    stray.write_bytes(b"half a checkpoint")
    capsys.readouterr()
    # the recipe without the original --set flags: a different recipe, refused with the changed keys listed
    assert cli_main(["train", str(recipe), "--resume", str(run / "last.pt")]) == 2
    line = _one_error_line(capsys, "train")
    assert "data.batch_size: 4 -> 2" in line and "optim.epochs: 2 -> 1" in line and "--allow-config-change" in line
    # no config given: the checkpoint's own (2 epochs done of 2: nothing left to train); the file is read once
    import revtal.engine.run_state as checkpoint_module

    reads = []
    load = checkpoint_module.load_checkpoint
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", lambda path: reads.append(path) or load(path))
    assert cli_main(["train", "--resume", str(run / "last.pt")]) == 0
    assert reads == [run / "last.pt"]
    assert not stray.exists()
    # a deliberate change, printed
    assert cli_main(["train", "--resume", str(run / "last.pt"), "--set", "optim.epochs=3", "--allow-config-change"]) == 0
    assert "config change on resume: optim.epochs: 2 -> 3" in capsys.readouterr().out
    # continued elsewhere: a new directory, which must not hold another run
    assert cli_main(["train", "--resume", str(run / "last.pt"), "--out", str(run)]) == 0  # the same place: fine
    (tmp_path / "other").mkdir()
    other = _recipe(dataset_root, tmp_path / "other")
    assert cli_main(["train", str(other)]) == 0
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(run / "last.pt"), "--out", str(tmp_path / "other" / "run")]) == 2
    assert "already holds a training run" in _one_error_line(capsys, "train")
    state = TrainingCheckpoint(run / "last.pt").state
    assert state["epoch"] == 2 and state["config"]["optim"]["epochs"] == 3 and state["config"]["data"]["batch_size"] == 4


def test_detect_names_outputs_uniquely_and_continues_past_a_bad_file(dataset_root, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.delenv("REVTAL_DEBUG", raising=False)
    _, annotations, video_dir = dataset_root
    run = tmp_path / "run"
    Trainer(_config(dataset_root, run, backbone__mode="conventional"), progress=False).fit()
    video = sorted(p for p in os.listdir(video_dir) if p.endswith(".mp4"))[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(os.path.join(video_dir, video), tmp_path / folder / "clip.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 50)
    videos = [str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "broken.mp4"), str(tmp_path / "b" / "clip.mp4")]
    capsys.readouterr()
    assert cli_main(["detect", *videos, "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "det")]) == 1
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "1 of 3 videos failed" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == ["a_clip.json", "a_clip.png", "b_clip.json", "b_clip.png"]
    assert json.loads((tmp_path / "det" / "b_clip.json").read_text())["video"] == videos[2]

    # a checkpoint of another model: one line with the summary
    state = torch.load(run / "last.pt", weights_only=False)
    state["config"]["backbone"]["options"]["depth"] = 3
    torch.save(state, tmp_path / "other.pt")
    assert cli_main(["detect", videos[0], "--checkpoint", str(tmp_path / "other.pt"), "--out", str(tmp_path / "d2")]) == 2
    line = _one_error_line(capsys, "detect")
    assert "does not fit this model" in line and "missing" in line and "Likely cause" in line


def test_skipped_and_unannotated_videos_are_summarised(dataset_root, tmp_path, capsys):
    _, annotations, video_dir = dataset_root
    data = json.loads(open(annotations).read())
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in os.listdir(video_dir):
        os.symlink(os.path.join(video_dir, name), videos / name)
    train_ids = [vid for vid, entry in data["database"].items() if entry["subset"] == "training"]
    data["database"]["broken"] = dict(data["database"][train_ids[0]])
    (videos / "broken.mp4").write_bytes(b"not a video" * 50)
    data["database"][train_ids[1]]["annotations"] = []
    (tmp_path / "ann.json").write_text(json.dumps(data))
    config = _config(dataset_root, tmp_path / "run", backbone__mode="conventional").with_values(
        {"data.annotations": str(tmp_path / "ann.json"), "data.video_dir": str(videos), "data.skip_bad_videos": True})
    capsys.readouterr()
    Trainer(config, progress=True).fit()
    out = capsys.readouterr().out
    total = len(train_ids) + 1
    assert f"epoch 1: training used {total - 2} of {total} videos: skipped 1 unreadable or missing (broken)" in out
    assert f"training videos: used {total - 2} of {total} videos" in out and f"without annotations ({train_ids[1]})" in out


def test_schedule_counts_optimizer_steps_when_gradients_accumulate(dataset_root, tmp_path):
    config = _config(dataset_root, tmp_path, optim__accumulate=2, backbone__schedule__end_epoch=1.0)
    trainer = Trainer(config, progress=False)
    seen = []
    apply = trainer.hooks.schedule.apply
    trainer.hooks.schedule.apply = lambda model, epoch, iteration: seen.append(iteration) or apply(model, epoch, iteration)
    trainer.fit()
    # both micro-batches of an optimizer step run at the same (α, β), and the schedule's iterations are steps
    assert seen == [i // 2 for i in range(len(trainer.train_loader))]
    assert trainer.iters_per_epoch == max(seen) + 1
