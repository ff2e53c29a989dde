"""Trimmed-clip lists in every layout, clip sampling, multi-view evaluation items, mixup/cutmix."""

import json

import numpy as np
import pytest
import torch
from data_fixtures import counter_video, frame_index_of

from revtal.data.cliplists import ClipListError, load_clip_list, read_classes, ssv2_class_name
from revtal.data.clips import ClipDataset, collate_clips, dense_indices, uniform_segment_indices
from revtal.data.decoding import VideoDecodeError
from revtal.data.mixup import MixupCutmix, smooth_one_hot, soft_target_cross_entropy
from revtal.data.synthetic import class_names, generate_clip_dataset
from revtal.data.transforms import spatial_crops

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_whitespace_list_reads_videomae_and_mmaction2_lines(tmp_path):
    _touch(tmp_path, "a/x.mp4", "b/y.mp4", "c.mp4")
    (tmp_path / "train.csv").write_text("a/x.mp4 3\nb/y.mp4 120 0\n\nc.mp4 1\n")
    clips = load_clip_list(tmp_path / "train.csv")
    assert [e.path.name for e in clips.entries] == ["x.mp4", "y.mp4", "c.mp4"]
    assert [e.label for e in clips.entries] == [3, 0, 1]
    assert clips.classes == ["0", "1", "2", "3"] and clips.entries[1].source.endswith("train.csv line 2")


def test_csv_without_header_with_header_and_kinetics_official(tmp_path):
    _touch(tmp_path, "v1.mp4", "v2.mp4", "abc_000010_000020.mp4", "def_000000_000010.mp4")
    (tmp_path / "plain.csv").write_text("v1.mp4,jump\nv2.mp4,run\n")
    plain = load_clip_list(tmp_path / "plain.csv")
    assert plain.classes == ["jump", "run"] and [e.label for e in plain.entries] == [0, 1]
    (tmp_path / "head.csv").write_text("label,video\nrun,v1.mp4\njump,v2.mp4\n")
    head = load_clip_list(tmp_path / "head.csv", classes=["jump", "run"])
    assert [(e.path.name, e.label) for e in head.entries] == [("v1.mp4", 1), ("v2.mp4", 0)]
    (tmp_path / "k400.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                       "abseiling,abc,10,20,train\n\"air drumming\",def,0,10,train\n")
    k400 = load_clip_list(tmp_path / "k400.csv")
    assert [e.path.name for e in k400.entries] == ["abc_000010_000020.mp4", "def_000000_000010.mp4"]
    assert k400.classes == ["abseiling", "air drumming"]


def test_ssv2_json_classes_from_templates_and_labels_json(tmp_path):
    _touch(tmp_path, "videos/11.webm", "videos/12.webm")
    (tmp_path / "labels.json").write_text(json.dumps({"Holding something": "1", "Pushing something from left to right": "0"}))
    (tmp_path / "train.json").write_text(json.dumps([
        {"id": "11", "label": "holding a cup", "template": "Holding [something]", "placeholders": ["a cup"]},
        {"id": "12", "label": "pushing pen", "template": "Pushing [something] from left to right"},
    ]))
    clips = load_clip_list(tmp_path / "train.json", tmp_path / "videos")
    assert clips.classes == ["Pushing something from left to right", "Holding something"]
    assert [(e.path.name, e.label) for e in clips.entries] == [("11.webm", 1), ("12.webm", 0)]
    assert ssv2_class_name("Putting [something] onto [something else]") == "Putting something onto something else"


def test_folder_per_class_and_its_empty_class(tmp_path):
    _touch(tmp_path, "data/walk/1.mp4", "data/walk/2.mp4", "data/run/3.avi", "data/run/notes.txt")
    clips = load_clip_list(tmp_path / "data")
    assert clips.classes == ["run", "walk"] and clips.counts() == [1, 2]
    (tmp_path / "data" / "sit").mkdir()
    with pytest.raises(ClipListError, match=r"data/sit: class 'sit' has no videos"):
        load_clip_list(tmp_path / "data")
    skipped = load_clip_list(tmp_path / "data", skip_bad_videos=True)
    assert skipped.classes == ["run", "sit", "walk"] and len(skipped.skipped) == 1


@pytest.mark.parametrize("line, message", [
    ("gone.mp4 0", r"train.txt line 2: video not found: .*gone.mp4"),
    ("ok.mp4 7", r"train.txt line 2: label 7 is out of range \[0, 2\)"),
    ("ok.mp4 dance", r"train.txt line 2: unknown label 'dance'"),
])
def test_bad_entries_name_file_line_and_value_or_are_listed_when_skipping(tmp_path, line, message):
    _touch(tmp_path, "ok.mp4")
    (tmp_path / "train.txt").write_text(f"ok.mp4 1\n{line}\n")
    with pytest.raises(ClipListError, match=message):
        load_clip_list(tmp_path / "train.txt", classes=["a", "b"])
    clips = load_clip_list(tmp_path / "train.txt", classes=["a", "b"], skip_bad_videos=True)
    assert len(clips.entries) == 1 and len(clips.skipped) == 1
    assert "line 2" in clips.skipped[0]


def test_malformed_line_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "train.txt").write_text("a b c d\n")
    with pytest.raises(ClipListError, match=r"train.txt line 1: expected 'path label'.*4 columns"):
        load_clip_list(tmp_path / "train.txt", skip_bad_videos=True)


def test_class_files_in_every_layout(tmp_path):
    (tmp_path / "a.txt").write_text("walk\nrun\n")
    (tmp_path / "b.csv").write_text("name,id\nrun,1\nwalk,0\n")
    (tmp_path / "c.txt").write_text("1 run\n0 walk\n")
    for name in ("a.txt", "b.csv", "c.txt"):
        assert read_classes(tmp_path / name) == ["walk", "run"]
    (tmp_path / "d.csv").write_text("walk,0\nrun,0\n")
    with pytest.raises(ClipListError, match="each once"):
        read_classes(tmp_path / "d.csv")


def test_uniform_segments_take_one_frame_per_segment():
    # 20 frames, 4 segments of 5: view 0 of 1 takes the middle (2.5 -> 2) of each
    assert uniform_segment_indices(20, 4).tolist() == [2, 7, 12, 17]
    # two views interleave at 1/4 and 3/4 of each segment
    assert uniform_segment_indices(20, 4, view=0, num_views=2).tolist() == [1, 6, 11, 16]
    assert uniform_segment_indices(20, 4, view=1, num_views=2).tolist() == [3, 8, 13, 18]
    # fewer frames than segments repeat frames; random draws stay inside their segment
    assert uniform_segment_indices(2, 4).tolist() == [0, 0, 1, 1]
    rng = np.random.default_rng(0)
    for _ in range(20):
        drawn = uniform_segment_indices(20, 4, rng)
        assert ((drawn >= [0, 5, 10, 15]) & (drawn < [5, 10, 15, 20])).all()


def test_dense_sampling_spaces_frames_by_the_interval_and_views_evenly():
    assert dense_indices(30, 4, 2).tolist() == [11, 13, 15, 17]  # centred: span 7, room 23, start 23 // 2
    assert dense_indices(30, 4, 2, view=0, num_views=3).tolist() == [0, 2, 4, 6]
    assert dense_indices(30, 4, 2, view=2, num_views=3).tolist() == [23, 25, 27, 29]
    assert dense_indices(5, 4, 2).tolist() == [0, 2, 4, 4]  # a short video repeats its last frame
    starts = {int(dense_indices(30, 4, 2, np.random.default_rng(s))[0]) for s in range(200)}
    assert min(starts) >= 0 and max(starts) <= 23 and len(starts) > 15


def test_spatial_crops_spread_along_the_longer_side():
    video = torch.arange(6 * 10, dtype=torch.float32).view(1, 1, 6, 10).expand(3, 2, 6, 10)
    left, centre, right = spatial_crops(video, 6, 3)
    assert left[0, 0, 0, 0] == 0 and centre[0, 0, 0, 0] == 2 and right[0, 0, 0, 0] == 4
    assert spatial_crops(video, 6, 1)[0].equal(centre)


def test_clip_dataset_decodes_the_sampled_frames_and_all_views(tmp_path):
    counter_video(tmp_path / "c.mp4", num_frames=24, fps=8.0, size=32)
    (tmp_path / "list.txt").write_text("c.mp4 0\n")
    clips = load_clip_list(tmp_path / "list.txt")
    evaluation = ClipDataset(clips, train=False, num_frames=4, img_size=32, sampling="dense", frame_interval=3,
                             test_clips=2, test_crops=3, **IDENTITY)
    item = evaluation[0]
    assert item["video"].shape == (6, 3, 4, 32, 32)
    grey = (item["video"][:, 0].mean(dim=(-1, -2)) * 255).numpy()  # (views, frames)
    assert np.round(grey / 10).astype(int).tolist()[0] == [0, 3, 6, 9]
    assert np.round(grey / 10).astype(int).tolist()[3] == [14, 17, 20, 23]
    train = ClipDataset(clips, train=True, num_frames=4, img_size=16, sampling="uniform", **IDENTITY)
    a, b = train[(0, 0)], train[(0, 0)]
    assert a["video"].shape == (3, 4, 16, 16) and a["video"].equal(b["video"])
    batch = collate_clips([a, b])
    assert batch["video"].shape == (2, 3, 4, 16, 16) and batch["label"].tolist() == [0, 0]


def test_unreadable_clip_is_named_or_skipped(tmp_path):
    counter_video(tmp_path / "good.mp4", num_frames=8)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    (tmp_path / "list.txt").write_text("bad.mp4 0\ngood.mp4 1\n")
    clips = load_clip_list(tmp_path / "list.txt")
    with pytest.raises(VideoDecodeError, match=r"bad.mp4: .*list.txt line 1"):
        ClipDataset(clips, train=False, num_frames=2, img_size=32)[0]
    skipping = ClipDataset(clips, train=False, num_frames=2, img_size=32, skip_bad_videos=True)
    item = skipping[0]
    assert item["label"] == 1 and item["skipped"] == [str(tmp_path / "bad.mp4")]


def test_synthetic_clips_are_deterministic_and_load(tmp_path):
    a = generate_clip_dataset(tmp_path / "a", num_classes=4, train_per_class=2, val_per_class=1, size=16,
                              duration_range=(2.0, 3.0), progress=False)
    b = generate_clip_dataset(tmp_path / "b", num_classes=4, train_per_class=2, val_per_class=1, size=16,
                              duration_range=(2.0, 3.0), progress=False)
    assert (a / "train.csv").read_text() == (b / "train.csv").read_text()
    assert (a / "clips/train_00005.mp4").read_bytes() == (b / "clips/train_00005.mp4").read_bytes()
    clips = load_clip_list(a / "train.csv", classes=a / "classes.txt")
    assert clips.classes == class_names(4)
    assert clips.counts() == [2, 2, 2, 2] and len(load_clip_list(a / "val.csv").entries) == 4


def test_label_smoothing_and_soft_cross_entropy_by_hand():
    targets = smooth_one_hot(torch.tensor([1]), 4, 0.1)
    assert torch.allclose(targets, torch.tensor([[0.025, 0.925, 0.025, 0.025]]))
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    assert soft_target_cross_entropy(logits, targets).item() == pytest.approx(np.log(4))


def test_mixup_and_cutmix_mix_targets_by_the_area_actually_mixed():
    video = torch.stack([torch.zeros(3, 2, 8, 8), torch.ones(3, 2, 8, 8)])
    labels = torch.tensor([0, 1])
    mixup = MixupCutmix(2, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    mixed, targets, info = mixup(video, labels, torch.Generator().manual_seed(3))
    lam = info["lam"]
    assert info["kind"] == "mixup" and torch.allclose(mixed[0], torch.full_like(mixed[0], 1 - lam))
    assert torch.allclose(targets, torch.tensor([[lam, 1 - lam], [1 - lam, lam]], dtype=torch.float32))
    cutmix = MixupCutmix(2, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    for seed in range(10):
        mixed, targets, info = cutmix(video, labels, torch.Generator().manual_seed(seed))
        pasted = float(mixed[0].mean())  # clip 0 is zeros: the pasted share is the mean
        assert targets[0, 1].item() == pytest.approx(pasted) and info["lam"] == pytest.approx(1 - pasted)
        assert (mixed[0, :, 0] == mixed[0, :, 1]).all()  # the same box in every frame
    again = cutmix(video, labels, torch.Generator().manual_seed(9))[0]
    assert again.equal(mixed)
    assert torch.allclose(targets.sum(1), torch.ones(2))
