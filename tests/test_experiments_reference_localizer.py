"""revtal bench localizer: the synthetic feature set, and one tiny end-to-end run (the reference is optional)."""

import json

import numpy as np

from revtal.experiments import reference_localizer as localizer
from revtal.cli import main
from revtal.data.annotations import load_annotations


def test_feature_set_matches_between_the_two_layouts(tmp_path):
    root = localizer.generate_feature_set(tmp_path, videos=9, dim=8, classes=3, lengths=(40, 60), seed=1)
    annotations = load_annotations(root / "annotations.json")
    reference = json.loads((root / "reference.json").read_text())["database"]
    assert sorted(annotations.videos) == sorted(reference) and len(annotations.videos) == 9
    assert {v.subset for v in annotations.videos.values()} == {"training", "validation"}
    training_labels = set()
    for vid, video in annotations.videos.items():
        features = np.load(root / "features" / f"{vid}.npy")
        assert features.shape[0] == 8 and 40 <= features.shape[1] <= 60
        np.testing.assert_array_equal(np.load(root / "reference" / f"{vid}.npy"), features.T)
        assert video.duration == features.shape[1] and len(video.segments) >= 1
        assert np.all(video.segments[:, 0] >= 0) and np.all(video.segments[:, 1] <= video.duration)
        assert np.all(video.segments[1:, 0] > video.segments[:-1, 1])  # apart, in order
        entry = reference[vid]
        assert [a["segment"] for a in entry["annotations"]] == video.segments.tolist()
        assert [annotations.classes.index(a["label"]) for a in entry["annotations"]] == video.labels.tolist()
        if video.subset == "training":
            training_labels |= set(video.labels.tolist())
    assert training_labels == {0, 1, 2}


def test_bench_localizer_trains_revtal_and_notes_a_missing_reference(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(localizer, "reference_available", lambda: False)
    out = tmp_path / "bench.json"
    code = main(["bench", "localizer", "--out", str(tmp_path), "--videos", "6", "--dim", "8", "--epochs", "1",
                 "--warmup-epochs", "0", "--seeds", "0", "--threads", "1", "--json", str(out), "--feature-sets", "B",
                 "--set", "localizer.options.embed_dim=16", "--set", "localizer.options.head_dim=16"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "actionformer) is not installed" in printed and "| B | revtal | final | 0 |" in printed
    record, = json.loads(out.read_text())["records"]
    assert record["implementation"] == "revtal" and record["parameters"] > 0
    for weights in ("final", "ema", "final_no_voting"):
        assert 0.0 <= record[weights]["average_mAP"] <= 1.0 and len(record[weights]["mAP"]) == 5
    assert record["set"] == "B" and (tmp_path / "runs" / "B_revtal_seed0.json").exists()
    # a second call reads the finished run instead of training again
    assert main(["bench", "localizer", "--out", str(tmp_path), "--videos", "6", "--dim", "8", "--epochs", "1",
                 "--warmup-epochs", "0", "--seeds", "0", "--threads", "1", "--feature-sets", "B",
                 "--set", "localizer.options.embed_dim=16", "--set", "localizer.options.head_dim=16"]) == 0
    assert "B revtal seed 0: read" in capsys.readouterr().out


def test_the_feature_sets_differ_in_lengths_density_and_classes(tmp_path):
    from revtal.data.annotations import load_annotations

    stats = {}
    for name, spec in localizer.FEATURE_SETS.items():
        root = localizer.generate_feature_set(tmp_path / name, videos=12, dim=4, **spec)
        videos = load_annotations(root / "annotations.json").videos.values()
        stats[name] = (len(load_annotations(root / "annotations.json").classes),
                       max(v.duration for v in videos), np.mean([len(v.segments) for v in videos]))
        assert all(spec["lengths"][0] <= v.duration <= spec["lengths"][1] for v in videos)
    assert len({s[0] for s in stats.values()}) == 3  # class counts
    assert stats["C"][1] > stats["A"][1] > stats["B"][1]  # the longest videos
    assert stats["B"][2] > stats["A"][2] > stats["C"][2]  # actions per video


def test_paired_differences_per_set_and_seed():
    def record(feature_set, name, seed, value):
        return {"set": feature_set, "implementation": name, "seed": seed, "final": {"average_mAP": value}}

    records = [record("A", "revtal", 0, 0.50), record("A", "reference", 0, 0.48), record("A", "revtal", 1, 0.40),
               record("A", "reference", 1, 0.41), record("A", "revtal", 2, 0.45), record("B", "revtal", 0, 0.3)]
    row, = localizer.paired_differences(records)
    assert row["set"] == "A" and row["seeds"] == [0, 1] and np.allclose(row["per_seed"], [0.02, -0.01])
    assert np.isclose(row["mean"], 0.005) and row["verdict"] == "not resolved"
    half = 12.706 * np.std([0.02, -0.01], ddof=1) / np.sqrt(2)
    assert np.allclose(row["ci95"], [0.005 - half, 0.005 + half])
