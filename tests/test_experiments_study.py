"""`revtal study` in its quick setting: runs, writes one result file per run, aggregates, resumes, and the entry
definitions really configure what their names say."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from revtal.experiments import study
from revtal.cli import main as cli_main
from revtal.engine.config import load_config


def test_quick_study_writes_results_tables_and_resumes(tmp_path):
    argv = ["study", "--quick", "--out", str(tmp_path), "--entries", "frozen,dr2net", "--seeds", "1",
            "--quiet-runs"]
    assert cli_main(argv) == 0
    for name in ("frozen", "dr2net"):
        record = json.loads((tmp_path / "results" / f"{name}_seed0.json").read_text())
        assert record["status"] == "ok" and record["seed"] == 0
        assert 0.0 <= record["average_mAP"] <= 1.0
        # the average is the mean over the evaluated thresholds
        assert record["average_mAP"] == pytest.approx(np.mean(record["mAP"]))
        assert not list((tmp_path / "runs" / f"{name}_seed0").glob("*.pt"))  # checkpoints removed
    frozen = json.loads((tmp_path / "results" / "frozen_seed0.json").read_text())
    dr2net = json.loads((tmp_path / "results" / "dr2net_seed0.json").read_text())
    assert frozen["backbone_saved_bytes"] == 0 < dr2net["backbone_saved_bytes"]  # no_grad saves nothing
    assert frozen["alpha_beta_end"] is None and 0.3 <= dr2net["alpha_beta_end"][0] <= 1.0  # scheduled α

    summary = json.loads((tmp_path / "study.json").read_text())
    entries = summary["entries"]
    assert set(entries) == {"frozen", "dr2net"}
    assert entries["dr2net"]["average_mAP_mean"] == pytest.approx(dr2net["average_mAP"])
    assert entries["dr2net"]["average_mAP_std"] is None  # one seed: no spread
    table = (tmp_path / "study.md").read_text()
    assert "Re²TAL Tab. 1" in table and "| frozen |" in table and "| dr2net (linear, simultaneous) |" in table
    assert "not run: conventional, re2" in table

    # restart: nothing left to do, existing results are kept untouched
    stamp = (tmp_path / "results" / "frozen_seed0.json").stat().st_mtime_ns
    assert cli_main(argv + ["--resume-partial"]) == 0
    assert (tmp_path / "results" / "frozen_seed0.json").stat().st_mtime_ns == stamp


def test_summary_mean_and_sample_std():
    records = [{"entry": "x", "seed": k, "status": "ok", "average_mAP": v, "mAP": [v, v], "backbone_saved_bytes": 10,
                "memory_kind": "saved_bytes", "step_time_s": t, "parameters": {"learnable": 5}}
               for k, (v, t) in enumerate([(0.2, 1.0), (0.4, 3.0), (0.6, 2.0)])]
    records.append({"entry": "x", "seed": 3, "status": "failed", "error": "FloatingPointError: nan"})
    s = study.summarize(records)
    assert s["average_mAP_mean"] == pytest.approx(0.4)
    assert s["average_mAP_std"] == pytest.approx(0.2)  # sqrt(((-.2)² + 0 + .2²) / 2)
    assert s["step_time_s"] == 2.0 and s["seeds"] == [0, 1, 2] and s["failed"][0]["seed"] == 3


def test_entry_overrides_configure_what_they_claim(tmp_path):
    base = study.base_config(tmp_path, epochs=5)
    assert base.optim.epochs == 5 and base.eval.every == 5 and base.backbone.schedule.end_epoch == 3.0
    yaml_path = tmp_path / "base.yaml"
    from revtal.engine.config import dump_config

    dump_config(base, yaml_path)

    def config(name):
        return load_config(yaml_path, study.run_overrides(study.ENTRY_BY_NAME[name], quick=False))

    vanilla = config("dr2net_vanilla").backbone
    assert (vanilla.mode, vanilla.alpha, vanilla.beta, vanilla.backprop) == ("hard", 1.0, 0.1, "exact")
    assert config("dr2net_float").backbone.backprop == "reversible"
    autograd = config("dr2net_autograd").backbone
    assert (autograd.mode, autograd.backprop) == ("dr2net", "vanilla")
    assert config("dr2net_start_1_8").backbone.schedule.beta0 == 0.125
    assert config("dr2net_drop_path").backbone.options["drop_path_rate"] == 0.1
    assert config("conventional_drop_path").backbone.mode == "conventional"
    import dataclasses

    import revtal
    from revtal.engine.modes import get_mode

    extractor = get_mode("dr2net").build_extractor(dataclasses.replace(autograd, pretrained=""), 8, 32)
    assert {s.backprop for s in revtal.reversible_stages(extractor)} == {"vanilla"}
    assert config("dr2net_float").backbone.monitor_tolerance == 1e30
    assert config("order_beta_first").backbone.schedule.order == "beta_first"
    no_long = config("losa_no_long").backbone.losa
    assert (no_long.clip_frames, no_long.use_long, no_long.use_short) == (8, False, True)
    assert config("losa_sum").backbone.losa.fusion == "sum"
    # every table names only defined entries, and every entry appears in some table
    in_tables = {name for t in study.TABLES for name in t.entries}
    assert in_tables == set(study.ENTRY_BY_NAME)
    assert [e.name for e in study.select_entries("re2tal_tab1,hard")] == ["frozen", "conventional", "re2", "hard"]
    with pytest.raises(ValueError, match="unknown entry or table 'nope'"):
        study.select_entries("nope")


def test_pretrain_per_seed_gives_each_seed_its_own_backbone(tmp_path):
    # --set reaches the base recipe of every run: here a larger validation subset of the generated dataset
    argv = ["study", "--quick", "--out", str(tmp_path), "--entries", "frozen", "--seeds", "2", "--pretrain-per-seed",
            "--quiet-runs", "--set", "data.synthetic.val_fraction=0.5", "--set", "optim.head_lr=0.002"]
    assert cli_main(argv) == 0
    base = yaml.safe_load((tmp_path / "base_config.yaml").read_text())
    assert base["data"]["synthetic"]["val_fraction"] == 0.5 and base["optim"]["head_lr"] == 0.002
    annotations = json.loads(Path(base["data"]["annotations"]).read_text())
    subsets = [v["subset"] for v in annotations["database"].values()]
    assert subsets.count("validation") == 3 == len(subsets) // 2  # the quick dataset's 6 videos, split in half
    assert Path(base["data"]["annotations"]).parent.name.endswith("_val0.5")
    records = [json.loads((tmp_path / "results" / f"frozen_seed{k}.json").read_text()) for k in (0, 1)]
    assert [r["pretrain_seed"] for r in records] == [0, 1]
    checkpoints = [next(o for o in r["overrides"] if o.startswith("backbone.pretrained=")) for r in records]
    assert checkpoints[0].endswith("seed0/backbone.pt") and checkpoints[1].endswith("seed1/backbone.pt")
    summary = json.loads((tmp_path / "study.json").read_text())
    assert [p["seed"] for p in summary["setting"]["pretrain"]] == [0, 1]
    assert summary["entries"]["frozen"]["seeds"] == [0, 1]


def test_paired_difference_uses_common_seeds_only():
    entry = {"seeds": [0, 1, 2], "average_mAP": [0.5, 0.3, 0.9]}
    reference = {"seeds": [0, 1, 3], "average_mAP": [0.4, 0.4, 0.0]}
    paired = study.paired_difference(entry, reference)
    assert paired.n == 2 and paired.mean == pytest.approx(0.0) and paired.std == pytest.approx(np.sqrt(0.02))
    assert study.paired_difference({"seeds": [5], "average_mAP": [0.1]}, reference) is None


def test_confidence_interval_of_paired_difference_uses_student_t():
    # diffs +0.02, +0.04, +0.03, +0.05, +0.01: mean 0.03, std 0.0158, t(4) = 2.776 → half-width 0.0196
    entry = {"seeds": [0, 1, 2, 3, 4], "average_mAP": [0.52, 0.44, 0.63, 0.55, 0.41]}
    reference = {"seeds": [0, 1, 2, 3, 4], "average_mAP": [0.50, 0.40, 0.60, 0.50, 0.40]}
    paired = study.paired_difference(entry, reference)
    low, high = paired.ci95
    assert (low, high) == pytest.approx((0.03 - 0.019632, 0.03 + 0.019632), abs=1e-5)
    assert paired.verdict() == "higher"
    assert study.paired_difference(reference, entry).verdict() == "lower"
    flat = {"seeds": [0, 1, 2], "average_mAP": [0.51, 0.39, 0.60]}  # diffs +0.01, −0.01, 0
    assert study.paired_difference(flat, reference).verdict() == "not resolved"
    assert study.PairedDifference(0.1, None, 1).ci95 is None
    # the t table and the expansion beyond it agree with known quantiles
    assert study.t_quantile_975(1) == 12.706 and study.t_quantile_975(30) == 2.042
    assert study.t_quantile_975(40) == pytest.approx(2.021, abs=1e-3)
    assert study.t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)


def test_noise_floor_is_checkpoint_against_conventional():
    summaries = {"conventional": {"seeds": [0, 1, 2], "average_mAP": [0.5, 0.4, 0.6]},
                 "checkpoint": {"seeds": [0, 1, 2], "average_mAP": [0.52, 0.39, 0.6]}}
    floors = study.noise_floor(summaries)
    floor = floors["checkpoint − conventional"]
    assert list(floors) == ["checkpoint − conventional"] and floor.n == 3 and floor.mean == pytest.approx(0.01 / 3)
    assert "paired std 1.53 points" in study.format_noise_floor(floors)
    assert study.noise_floor({"conventional": summaries["conventional"]}) == {}
    assert "not measured" in study.format_noise_floor({})


def test_forest_plot_of_paired_differences(tmp_path):
    seeds = [0, 1, 2]
    summaries = {"conventional": {"seeds": seeds, "average_mAP": [0.5, 0.4, 0.6]},
                 "re2": {"seeds": seeds, "average_mAP": [0.45, 0.36, 0.56]},
                 "checkpoint": {"seeds": seeds, "average_mAP": [0.51, 0.39, 0.6]}}
    path = study.plot_differences(summaries, tmp_path / "study.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert study.plot_differences({"conventional": summaries["conventional"]}, tmp_path / "none.png") is None


def test_parallel_jobs_give_the_same_results_as_one_process(tmp_path):
    common = ["study", "--quick", "--entries", "conventional", "--seeds", "2", "--quiet-runs", "--threads", "1"]
    assert cli_main(common + ["--out", str(tmp_path / "serial")]) == 0
    assert cli_main(common + ["--out", str(tmp_path / "parallel"), "--jobs", "2"]) == 0
    for seed in (0, 1):
        serial, parallel = (json.loads((tmp_path / run / "results" / f"conventional_seed{seed}.json").read_text())
                            for run in ("serial", "parallel"))
        assert parallel["status"] == "ok"
        assert (parallel["average_mAP"], parallel["final_loss"]) == (serial["average_mAP"], serial["final_loss"])
    with pytest.raises(SystemExit, match="--jobs must be positive"):
        cli_main(common + ["--out", str(tmp_path / "bad"), "--jobs", "0"])


def test_quick_study_runs_the_action_recognition_entries_and_re2_with_re_pretraining(tmp_path):
    argv = ["study", "--quick", "--out", str(tmp_path), "--entries", "ar_dr2net,ar_frozen,re2_repretrained",
            "--seeds", "1", "--quiet-runs"]
    assert cli_main(argv) == 0
    for name in ("ar_dr2net", "ar_frozen"):
        record = json.loads((tmp_path / "results" / f"{name}_seed0.json").read_text())
        assert record["status"] == "ok" and record["metric"] == "top1" and record["score"] == record["top1"]
        assert 0.0 <= record["top1"] <= record["top5"] <= 1.0
    repretrained = json.loads((tmp_path / "results" / "re2_repretrained_seed0.json").read_text())
    assert repretrained["status"] == "ok" and repretrained["repretrain"]["mode"] == "re2"
    checkpoint = repretrained["repretrain"]["checkpoint"]
    assert Path(checkpoint).is_file() and f"backbone.pretrained={checkpoint}" in repretrained["overrides"]
    summary = json.loads((tmp_path / "study.json").read_text())
    dr2net = summary["entries"]["ar_dr2net"]
    assert dr2net["metric"] == "top1" and dr2net["top1_mean"] == dr2net["score_mean"] and "top5_mean" in dr2net
    assert summary["tables"]["dr2net_ar_tab2"]["paired_vs_reference"]["ar_frozen"]["n"] == 1
    assert "top-1 (%)" in (tmp_path / "study.md").read_text()


def test_action_recognition_entries_configure_what_they_claim(tmp_path):
    from revtal.experiments.study.classification import ar_config

    tal = study.base_config(tmp_path)
    base = ar_config(tal, tmp_path / "ar", quick=False, epochs=None)
    assert base.task == "classification" and base.classification.synthetic.classes == 12
    assert (base.optim.layer_decay, base.classification.label_smoothing) == (0.75, 0.1)
    assert base.backbone.options["drop_path_rate"] == 0.1 and base.backbone.pretrained == tal.backbone.pretrained
    schedule = base.backbone.schedule  # Dr²Net's AR schedule: every 2 iterations, ending at 1/8 of training
    assert (schedule.every, schedule.unit, schedule.end_epoch) == (2, "iteration", base.optim.epochs / 8)

    def config(name):
        return base.with_overrides(study.run_overrides(study.ENTRY_BY_NAME[name], quick=False))

    vanilla = config("ar_dr2net_vanilla").backbone
    assert (vanilla.mode, vanilla.alpha, vanilla.beta, vanilla.backprop) == ("hard", 1.0, 0.1, "exact")
    assert config("ar_eta_20").backbone.schedule.every == 20
    assert config("ar_order_alpha_first").backbone.schedule.order == "alpha_first"
    assert config("ar_frozen").backbone.mode == "frozen" and config("ar_scratch").backbone.mode == "scratch"
