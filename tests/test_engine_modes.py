"""One TrainingMode object per mode: the benchmark builds exactly the module the trainer trains."""

import pytest
import torch

import revtal
from revtal.bench.configs import PEER_MODES, BenchConfig, parse_label
from revtal.bench.targets import build_target
from revtal.engine.config import config_from_dict
from revtal.engine.datasets import resolve_dataset
from revtal.engine.modes import get_mode, mode_names
from revtal.engine.trainer import Trainer

# each benchmark mode, and the backbone section of the training recipe it claims to measure
TRAINED_AS = {
    "conventional": {"mode": "conventional"},
    "frozen": {"mode": "frozen"},
    "checkpoint": {"mode": "checkpoint"},
    "re2": {"mode": "re2"},
    "dr2net:reversible": {"mode": "dr2net", "backprop": "reversible", "schedule": {"alpha0": 0.5, "beta0": 0.5}},
    "dr2net:exact": {"mode": "dr2net", "backprop": "exact", "schedule": {"alpha0": 1.0, "beta0": 0.1}},
    "losa": {"mode": "losa", "losa": {"clip_frames": 4}},
    "unipt": {"mode": "unipt", "unipt": {"clip_frames": 4}},
    "st_adapter": {"mode": "st_adapter", "st_adapter": {"clip_frames": 4}},
    "aim": {"mode": "aim", "aim": {"clip_frames": 4}},
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("modes")


def _structure(module: torch.nn.Module) -> list[tuple[str, str, bool]]:
    return [(name, type(m).__name__, m.training) for name, m in module.named_modules()]


@pytest.mark.parametrize("bench_mode", sorted(TRAINED_AS))
def test_bench_module_is_the_trainers_module(bench_mode, data_root):
    assert set(TRAINED_AS) | set(PEER_MODES) == set(__import__("revtal.bench.configs").bench.configs.MODES)
    mode, backprop = parse_label(bench_mode)
    bench = build_target(BenchConfig("vit_tiny_video", mode, depth=2, frames=4, img_size=16, batch=1,
                                     backprop=backprop)).target
    config = config_from_dict({
        "data": {"num_frames": 4, "img_size": 16,
                 "synthetic": {"videos": 4, "classes": 2, "size": 16, "fps": 1.0, "min_duration": 4.0,
                               "max_duration": 5.0}},
        "backbone": {"name": "vit_tiny_video", "options": {"depth": 2}, **TRAINED_AS[bench_mode]},
        "localizer": {"options": {"embed_dim": 16, "head_dim": 16, "num_heads": 2, "window_size": 3,
                                  "num_branch_blocks": 1, "regression_ranges": [[0, 2], [2, 10000]]}},
        "train": {"out_dir": str(data_root / bench_mode.replace(":", "_")), "seed": 0},
    })
    trainer = Trainer(resolve_dataset(config, config.train.out_dir), progress=False)
    trained, benched = trainer.model.extractor, bench.features
    trainer.model.train()
    bench.train()
    assert _structure(benched) == _structure(trained)
    assert bench.frozen == trainer.model.frozen_backbone
    assert [(n, p.requires_grad) for n, p in benched.named_parameters()] == \
        [(n, p.requires_grad) for n, p in trained.named_parameters()]
    trained_state = trained.state_dict()
    for key, value in benched.state_dict().items():
        assert torch.equal(value, trained_state[key]), key
    assert [(s.alpha, s.beta, s.backprop) for s in revtal.reversible_stages(benched)] == \
        [(s.alpha, s.beta, s.backprop) for s in revtal.reversible_stages(trained)]


def test_registry_names_and_errors():
    assert set(mode_names()) == {"frozen", "conventional", "checkpoint", "re2", "hard", "dr2net", "scratch", "losa",
                                "unipt", "st_adapter", "aim"}
    assert get_mode("dr2net").name == "dr2net"
    with pytest.raises(ValueError, match="unknown training mode 'magic'"):
        get_mode("magic")


@pytest.mark.parametrize("mode, schedule, monitor, exact_checked", [
    ("conventional", False, False, False), ("frozen", False, False, False), ("re2", False, True, False),
    ("hard", False, False, True), ("dr2net", True, False, True), ("losa", False, False, False),
    ("unipt", False, False, False), ("st_adapter", False, False, False), ("aim", False, False, False),
])
def test_each_mode_owns_its_hooks(mode, schedule, monitor, exact_checked):
    from revtal.engine.config import load_config
    from revtal.engine.model import build_model

    config = load_config(None, [f"backbone.mode={mode}", "backbone.options={depth: 1}", "data.num_frames=4",
                                "data.img_size=16", "backbone.losa.clip_frames=4",
                                *(f"backbone.{m}.clip_frames=4" for m in ("unipt", "st_adapter", "aim"))])
    model = build_model(config, 2)
    hooks = model.mode.hooks(model, config.backbone, iters_per_epoch=3)
    assert (hooks.schedule is not None, hooks.monitor is not None) == (schedule, monitor)
    assert bool(hooks._unverified_exact) == exact_checked
    state = hooks.state_dict()
    assert set(state) == {"coefficients", "monitor"}
    assert (state["coefficients"] is not None, state["monitor"] is not None) == (schedule, monitor)


def test_checkpoint_layout_reads_ema_weights_and_trained_coefficients(tmp_path):
    from revtal.engine.run_state import TrainingCheckpoint
    from revtal.engine.config import load_config

    config = load_config(None)
    weights, shadow = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    applied = {"alpha": 0.5, "beta": 0.25, "epoch": 1, "iteration": 0}
    common = {"model": weights, "config": config.to_dict(), "classes": ["a", "b"]}
    torch.save({**common, "ema": {"shadow": shadow}, "mode": {"coefficients": {"last_applied": applied},
                                                              "monitor": None}}, tmp_path / "now.pt")
    torch.save({**common, "ema": None, "coefficients": {"last_applied": applied}}, tmp_path / "before.pt")
    now, before = TrainingCheckpoint(tmp_path / "now.pt"), TrainingCheckpoint(tmp_path / "before.pt")
    assert now.inference_weights() is not None and torch.equal(now.inference_weights()["w"], shadow["w"])
    assert torch.equal(before.inference_weights()["w"], weights["w"])
    assert now.trained_coefficients() == before.trained_coefficients() == (0.5, 0.25)
    assert now.config() == config and now.classes == ["a", "b"]
    torch.save({"model": weights}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare.pt: not a revtal training checkpoint \\(no 'config' entry\\)"):
        TrainingCheckpoint(tmp_path / "bare.pt")


SWIN_MODES = [m for m in mode_names() if m not in ("st_adapter", "aim")]  # those two adapt ViT blocks only


@pytest.mark.parametrize("mode", SWIN_MODES)
def test_every_mode_computes_video_swin_attention_by_window_chunks(mode):
    # backbone.window_chunk is an option of the attention, not of the conversion: frozen, adapter and conventional
    # backbones (left unconverted) chunk too, so a no-grad forward holds one chunk's scores in every mode
    import copy

    from torchvision.models.video.swin_transformer import SwinTransformer3d

    from tests.helpers import live_peak_bytes

    torch.manual_seed(0)
    ref = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[2], num_heads=[2], window_size=[2, 8, 8],
                            stochastic_depth_prob=0.0).eval()
    video = torch.randn(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(4))
    peaks = []
    for window_chunk in (None, 1):
        settings = config_from_dict({"backbone": {"name": "swin3d_t", "mode": mode,
                                                  "window_chunk": window_chunk}}).backbone
        model = copy.deepcopy(ref)
        get_mode(mode).convert(model, settings)
        model.eval()
        with torch.no_grad():
            peaks.append(live_peak_bytes(lambda m=model: m(video)))
    scores = 8 * 2 * 128 * 128 * 4  # one block's fp32 scores over its 8 windows
    assert peaks[0] - peaks[1] >= 1.5 * scores, peaks
