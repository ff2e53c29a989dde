"""revtal bench: configuration grid, in-process measurements, ratios, peers absent, and one end-to-end CLI run."""

from __future__ import annotations

import json
import sys

import pytest

from revtal.bench.configs import BenchConfig, Grid
from revtal.bench.runner import add_ratios

# a 2-block tiny ViT (width 64) on 8×96² clips: 4×6×6 = 144 tokens per clip
TINY = dict(model="vit_tiny_video", depth=2, frames=8, img_size=96, batch=2)
TOKEN_MAP_BYTES = 2 * 144 * 64 * 4  # batch × tokens × width × float32


def test_grid_crosses_options_keeps_non_vit_depth_and_skips_peers_there():
    grid = Grid(
        models=["vit_tiny_video", "r3d_18"], modes=["conventional", "revlib"], depths=[2, 4], frames=[8],
        img_sizes=[32], batches=[1], options={"repeats": 3},
    )
    configs, notes = grid.configs()
    vit = [(c.mode, c.depth) for c in configs if c.model == "vit_tiny_video"]
    assert vit == [("conventional", 2), ("revlib", 2), ("conventional", 4), ("revlib", 4)]
    resnet = [c for c in configs if c.model == "r3d_18"]
    assert [(c.mode, c.depth) for c in resnet] == [("conventional", None)]  # depths do not apply, measured once
    assert all(c.repeats == 3 for c in configs)
    assert notes == ["revlib skipped for r3d_18: the peer stacks are built from ViT blocks only"]


def test_config_validation_names_the_field_and_round_trips_json():
    with pytest.raises(ValueError, match="'warmup'"):
        BenchConfig(**TINY, mode="re2", warmup=0)
    with pytest.raises(ValueError, match="unknown benchmark mode 'fast'"):
        BenchConfig(**TINY, mode="fast")
    config = BenchConfig(**TINY, mode="dr2net", backprop="exact", exact_coefficients=(1.0, 0.25))
    assert BenchConfig.from_json(config.to_json()) == config
    assert config.label == "dr2net:exact" and config.coefficients == (1.0, 0.25)
    assert BenchConfig(**TINY, mode="dr2net") == config.__class__(**TINY, mode="dr2net", backprop="exact",
                                                                   exact_coefficients=(1.0, 0.1))  # the default
    with pytest.raises(ValueError, match="unknown benchmark mode 're2:exact'"):
        BenchConfig(**TINY, mode="re2", backprop="exact")  # re2's backprop is not a choice


def test_finetune_init_starts_the_zero_batchnorm_scales_at_one_and_only_those():
    # pytorchvideo's bottlenecks start their last BatchNorm scale at zero: at α = 0 a Re² block outputs that
    # BatchNorm, so every such branch would start dead; "finetune" starts them at one, as pretrained weights do
    from torch import nn

    from revtal.bench.targets import build_target

    small = dict(model="slowfast_r50", depth=None, frames=8, img_size=32, batch=1, mode="re2")
    with pytest.raises(ValueError, match="'init'.*'pretrained'"):
        BenchConfig(**small, init="pretrained")

    def scales(init):
        built = build_target(BenchConfig(**small, init=init))
        norms = [m for m in built.target.modules() if isinstance(m, nn.BatchNorm3d)]
        return [m.weight.detach().clone() for m in norms], built.info

    library, library_info = scales("library")
    finetune, finetune_info = scales("finetune")
    zero = [i for i, w in enumerate(library) if not w.any()]
    assert zero and "norm_scales_started_at_one" not in library_info
    assert finetune_info["norm_scales_started_at_one"] == len(zero)
    for i, (before, after) in enumerate(zip(library, finetune)):
        assert after.eq(1).all() if i in zero else after.equal(before)


def test_mode_labels_name_the_training_mode_and_read_earlier_records():
    from revtal.bench.configs import canonical_label, record_label

    assert canonical_label("dr2net") == "dr2net:exact" and canonical_label("re2") == "re2"
    assert canonical_label("dr2net_float") == "dr2net:reversible"  # an earlier command line
    assert record_label({"mode": "dr2net_exact"}) == "dr2net:exact"  # an earlier JSON record
    assert record_label({"mode": "dr2net", "backprop": "reversible", "label": "dr2net:reversible"}) == \
        "dr2net:reversible"
    configs, _ = Grid(models=["vit_tiny_video"], modes=["dr2net:reversible"], depths=[2], frames=[8],
                      img_sizes=[32], batches=[1]).configs()
    assert [(c.mode, c.backprop, c.coefficients) for c in configs] == [("dr2net", "reversible", (0.5, 0.5))]


def test_ratios_pair_records_of_the_same_shape_only():
    def record(mode, saved, time, depth=12):
        return dict(model="m", depth=depth, frames=8, img_size=32, batch=1, device="cpu", mode=mode,
                    saved_bytes=saved, peak_bytes=None, cuda_max_allocated_bytes=None, step_time_s=time)

    records = [record("conventional", 200, 1.0), record("checkpoint", 40, 1.5), record("re2", 10, 1.8),
               record("re2", 10, 3.0, depth=24)]
    add_ratios(records)
    conventional, checkpoint, re2, deeper = records
    assert conventional["saved_vs_conventional"] == 1.0
    assert re2["saved_vs_conventional"] == 10 / 200 and re2["saved_vs_checkpoint"] == 10 / 40
    assert re2["time_vs_conventional"] == 1.8 and re2["time_vs_checkpoint"] == pytest.approx(1.2)
    assert checkpoint["time_vs_conventional"] == 1.5
    assert re2["peak_vs_conventional"] is None  # not measured
    assert deeper["saved_vs_conventional"] is None  # no conventional record at depth 24


def test_reversible_mode_saves_its_two_streams_and_conventional_saves_far_more():
    from revtal.bench.worker import measure

    saved = {mode: measure(BenchConfig(**TINY, mode=mode))["saved_bytes"] for mode in ("conventional", "re2")}
    # re2 keeps only the stage output streams (x_n, y_n) plus the small pooled features of the head
    assert 2 * TOKEN_MAP_BYTES <= saved["re2"] < 3 * TOKEN_MAP_BYTES
    # conventional keeps, per block, at least the two LayerNorm inputs, q/k/v, the MLP hidden (4 widths) and its GELU
    assert saved["conventional"] > 2 * (2 + 3 + 4 + 4) * TOKEN_MAP_BYTES * 0.9


def test_clips_run_through_the_backbone_one_by_one_and_are_counted():
    from revtal.bench.worker import measure

    one, two = (measure(BenchConfig(**TINY, mode="re2", clips=n)) for n in (1, 2))
    assert (one["clips"], two["clips"]) == (1, 2)
    # every clip's graph lives until the step's backward: two streams (and pooled features) per clip
    assert 2 * TOKEN_MAP_BYTES <= one["saved_bytes"] < 3 * TOKEN_MAP_BYTES
    assert two["saved_bytes"] == pytest.approx(2 * one["saved_bytes"], rel=0.01)
    for record in (one, two):
        assert record["param_grad_bytes"] == 4 * record["trainable_params"]
        assert record["peak_bytes"] == max(record["forward_peak_bytes"], record["backward_peak_bytes"])


def test_missing_peer_library_is_reported_not_raised(monkeypatch, capsys):
    from revtal.bench import worker

    monkeypatch.setitem(sys.modules, "revlib", None)  # import now fails even where revlib is installed
    code = worker.main([BenchConfig(**TINY, mode="revlib").to_json()])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and line.startswith(worker.RESULT_PREFIX)
    result = json.loads(line[len(worker.RESULT_PREFIX):])
    assert result == {"status": "unavailable", "reason": "revlib is not installed (pip install 'revtal[bench]')"}


def test_cli_quick_run_in_a_subprocess_writes_json_and_plots(tmp_path):
    from revtal.cli import main

    out, plots = tmp_path / "bench.json", tmp_path / "figures"
    # one configuration (one worker process: starting one costs seconds on a loaded machine)
    code = main(["bench", "memory", "--quick", "--clips", "2", "--modes", "conventional", "--json", str(out),
                 "--plot", str(plots), "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert {"cpu_model", "cpu_cores", "torch", "device"} <= set(data["machine"])
    assert data["skipped"] == [] and len(data["records"]) == 1
    record = data["records"][0]
    assert {"model", "mode", "depth", "frames", "img_size", "batch", "saved_bytes", "peak_bytes",
            "step_time_s"} <= set(record)
    assert (record["model"], record["mode"], record["depth"], record["frames"], record["img_size"], record["batch"],
            record["clips"], record["clip_batch"]) == ("vit_tiny_video", "conventional", 2, 8, 96, 2, 2, 1)
    assert {"forward_peak_bytes", "after_forward_bytes", "backward_peak_bytes", "param_grad_bytes"} <= set(record)
    assert record["malloc_mmap_threshold"] == "65536"  # measured in a worker process started with the setting
    # the step's activations (tens of token maps of 72 KiB, each its own mapping) raise the resident set
    assert record["peak_bytes"] > 4 * TOKEN_MAP_BYTES
    assert record["saved_bytes"] > 0 and record["step_time_s"] > 0
    assert record["saved_vs_conventional"] == 1.0
    for name in ("memory_vs_depth.png", "memory_vs_frames.png", "memory_vs_clips.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_merges_runs_recomputing_ratios_and_keeping_the_last_measurement(tmp_path, capsys):
    from revtal.cli import main

    def record(mode, saved, depth):
        return dict(model="m", depth=depth, frames=8, img_size=32, batch=1, device="cpu", mode=mode,
                    saved_bytes=saved, peak_bytes=2 * saved, cuda_max_allocated_bytes=None, step_time_s=1.0)

    first = {"machine": {"cpu_model": "A"}, "records": [record("conventional", 100, 12), record("re2", 50, 12)]}
    second = {"machine": {"cpu_model": "B"}, "records": [record("re2", 5, 12), record("re2", 6, 24)],
              "skipped": [{"mode": "memcnn", "model": "m", "status": "unavailable", "reason": "not installed"}]}
    paths = []
    for name, data in (("a.json", first), ("b.json", second)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(data))
    merged = tmp_path / "merged.json"
    assert main(["bench", "report", "--inputs", *map(str, paths), "--json", str(merged)]) == 0
    data = json.loads(merged.read_text())
    assert [m["cpu_model"] for m in data["machine"]["machines"]] == ["A", "B"]
    by = {(r["mode"], r["depth"]): r for r in data["records"]}
    assert len(by) == 3 and by[("re2", 12)]["saved_bytes"] == 5  # the later file's measurement wins
    assert by[("re2", 12)]["saved_vs_conventional"] == 0.05 and by[("re2", 24)]["saved_vs_conventional"] is None
    assert data["skipped"][0]["mode"] == "memcnn"
    assert "| m | re2 | 12 | 8×32² | 1 |" in capsys.readouterr().out

    (tmp_path / "bad.json").write_text("{}")
    assert main(["bench", "report", "--inputs", str(tmp_path / "bad.json")]) == 2


def test_rounds_alternate_the_order_and_pool_step_times_phases_and_cpu_times():
    from revtal.bench.runner import run_configs

    configs = [BenchConfig(**TINY, mode=mode) for mode in ("conventional", "re2", "checkpoint")]
    calls = []

    def fake_measure(config, timeout_s):  # stands in for the worker process: the pooling logic is under test
        calls.append(config.mode)
        n = calls.count(config.mode)
        if config.mode == "checkpoint" and n == 2:
            return {"status": "error", "reason": "boom"}
        return {**json.loads(config.to_json()), "status": "ok", "saved_bytes": 10 * n, "peak_bytes": 100 * n,
                "step_times_s": [float(n), float(n) + 0.5], "step_time_s": 0.0,
                "step_phases_s": [[n, 0.0, 0.0], [n, 0.5, 0.0]], "step_cpu_times_s": [n / 2, n / 2 + 0.25]}

    result = run_configs(configs, rounds=3, progress=False, measure=fake_measure)
    # forward, backward, forward; a configuration that failed once is not run again
    assert calls == ["conventional", "re2", "checkpoint", "checkpoint", "re2", "conventional", "conventional", "re2"]
    by = {r["mode"]: r for r in result.records}
    assert set(by) == {"conventional", "re2"} and [s["mode"] for s in result.skipped] == ["checkpoint"]
    assert by["re2"]["step_times_s"] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert by["re2"]["step_time_s"] == 2.25 and by["re2"]["step_time_min_s"] == 1.0
    assert len(by["re2"]["step_phases_s"]) == 6 and by["re2"]["step_phases_s"][-1] == [3, 0.5, 0.0]
    assert by["re2"]["step_cpu_time_s"] == 1.125
    assert by["re2"]["saved_bytes"] == 10 and by["re2"]["peak_bytes_rounds"] == [100, 200, 300]
    assert by["re2"]["rounds"] == 3


def test_memory_runs_return_freed_memory_and_speed_runs_keep_the_default_allocator(monkeypatch):
    """Per-allocation mmap makes the resident set follow live tensors (memory) but costs page faults on every large
    allocation, which slowed exact arithmetic by 1.3x: speed runs must time the allocator a user's process has."""
    import argparse
    import subprocess

    from revtal.bench import runner
    from revtal.commands.bench import add_arguments, build_grid

    def grid_allocators(kind):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        configs, _ = build_grid(parser.parse_args([kind, "--quick", "--modes", "re2"])).configs()
        return {c.allocator for c in configs}

    assert grid_allocators("memory") == {"mmap"} and grid_allocators("speed") == {"default"}
    seen = {}

    def fake_run(command, env, **kwargs):
        seen[json.loads(command[-1])["allocator"]] = env.get("MALLOC_MMAP_THRESHOLD_")
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="no result")

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "123")  # inherited from the user's shell: not passed to speed runs
    config = BenchConfig(model="vit_tiny_video", mode="re2", depth=2, frames=8, img_size=96, batch=1)
    for allocator in ("mmap", "default"):
        runner.run_in_subprocess(BenchConfig(**{**json.loads(config.to_json()), "allocator": allocator}))
    assert seen == {"mmap": runner.MMAP_THRESHOLD, "default": None}
    # a speed worker measures time only: under the default allocator the resident set hides freed activations
    from revtal.bench.worker import measure

    tiny = dict(model="vit_tiny_video", mode="re2", depth=1, frames=4, img_size=32, batch=1, threads=1)
    timed = measure(BenchConfig(**tiny, allocator="default"))
    assert timed["peak_bytes"] is None and timed["backward_peak_bytes"] is None and timed["step_time_s"] > 0
    with pytest.raises(ValueError, match="allocator"):
        BenchConfig(model="vit_tiny_video", mode="re2", depth=2, frames=8, img_size=96, batch=1, allocator="jemalloc")


def test_bench_window_chunk_reaches_the_backbone_section_the_mode_builds_from():
    from revtal.bench.targets import training_settings

    for mode in ("conventional", "checkpoint", "re2"):
        config = BenchConfig(model="swin3d_t", mode=mode, depth=None, frames=8, img_size=64, batch=1, window_chunk=4)
        assert training_settings(config).window_chunk == 4
    assert training_settings(BenchConfig(model="swin3d_t", mode="re2", depth=None, frames=8, img_size=64,
                                         batch=1)).window_chunk is None
    with pytest.raises(ValueError, match="window_chunk"):
        BenchConfig(model="swin3d_t", mode="re2", depth=None, frames=8, img_size=64, batch=1, window_chunk=0)
