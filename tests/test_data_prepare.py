"""``revtal prepare``: THUMOS-14's official per-class text files become revtal's JSON with durations from the
videos, and a folder of videos is re-encoded in parallel, resumably, without touching the originals, a broken file
reported and skipped."""

import hashlib
import json

import numpy as np
import pytest

from data_fixtures import counter_video, frame_index_of
from revtal.cli import main as revtal_main
from revtal.data.annotations import load_annotations
from revtal.data.decoding import decode_frames, probe_video


def official_thumos(root):
    """A miniature of TH14_Temporal_annotations_{validation,test}/annotation/*.txt (whitespace as distributed)."""
    val, test = root / "annotation_val", root / "annotation_test"
    val.mkdir(parents=True)
    test.mkdir(parents=True)
    (val / "BaseballPitch_val.txt").write_text("video_validation_0000001 0.5 1.5\nvideo_validation_0000002  0.2  0.9\n")
    (val / "Diving_val.txt").write_text("video_validation_0000001 2.0 2.8\n")
    (val / "Ambiguous_val.txt").write_text("video_validation_0000002 1.0 1.4 \n")
    # ends past the 3 s video, as 26 test segments of the real files do
    (test / "Diving_test.txt").write_text("video_test_0000001 2.5 3.6\n\n")
    (test / "BaseballPitch_test.txt").write_text("")
    return root


@pytest.fixture
def thumos(tmp_path):
    videos = tmp_path / "videos"
    for name in ("video_validation_0000001", "video_validation_0000002", "video_test_0000001"):
        counter_video(videos / f"{name}.mp4", num_frames=24, fps=8.0)  # 3 s
    return official_thumos(tmp_path / "annotations"), videos


def test_official_thumos_files_become_revtal_json_with_durations_from_the_videos(thumos, tmp_path, capsys):
    annotations, videos = thumos
    out = tmp_path / "thumos14.json"
    assert revtal_main(["prepare", "thumos14", str(annotations), "--videos", str(videos), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["classes"] == ["BaseballPitch", "Diving"]
    entry = data["database"]["video_validation_0000001"]
    assert entry["subset"] == "validation" and entry["duration"] == pytest.approx(3.0, abs=0.01) and entry["fps"] == 8.0
    assert entry["annotations"] == [{"label": "BaseballPitch", "segment": [0.5, 1.5]},
                                    {"label": "Diving", "segment": [2.0, 2.8]}]
    ann = load_annotations(out)
    assert ann.videos["video_test_0000001"].subset == "testing"
    np.testing.assert_array_equal(ann.videos["video_test_0000001"].segments, [[2.5, 3.6]])  # as distributed
    np.testing.assert_array_equal(ann.videos["video_validation_0000002"].ambiguous, [[1.0, 1.4]])
    assert "3 videos, 5 instances, 2 classes" in capsys.readouterr().out


def test_missing_videos_and_bad_lines_are_one_line_errors(thumos, tmp_path, capsys):
    annotations, videos = thumos
    (videos / "video_test_0000001.mp4").unlink()
    out = tmp_path / "gt.json"
    assert revtal_main(["prepare", "thumos14", str(annotations), "--videos", str(videos), "--out", str(out)]) == 2
    assert "1 of 3 annotated videos are not in" in capsys.readouterr().err and not out.exists()
    assert revtal_main(["prepare", "thumos14", str(annotations), "--videos", str(videos), "--out", str(out),
                        "--skip-missing"]) == 0
    assert set(json.loads(out.read_text())["database"]) == {"video_validation_0000001", "video_validation_0000002"}
    (annotations / "annotation_val" / "Diving_val.txt").write_text("video_validation_0000001 2.0\n")
    assert revtal_main(["prepare", "thumos14", str(annotations), "--videos", str(videos), "--out", str(out)]) == 2
    assert "Diving_val.txt:1: expected 'video_name start end'" in capsys.readouterr().err


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_videos_are_reencoded_in_parallel_resumably_and_a_broken_one_is_skipped(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    counter_video(src / "a.mp4", num_frames=24, fps=8.0, size=32)
    counter_video(src / "b.mp4", num_frames=16, fps=8.0, size=32)
    (src / "broken.mp4").write_bytes(b"not a video at all")
    before = {p.name: digest(p) for p in src.iterdir()}
    args = ["prepare", "videos", str(src), str(dst), "--fps", "4", "--short-side", "16", "--workers", "2"]
    assert revtal_main(args) == 1  # one failure
    captured = capsys.readouterr()
    assert "re-encoded 2 videos" in captured.out and "1 failed" in captured.out and "broken.mp4" in captured.err
    assert {p.name: digest(p) for p in src.iterdir()} == before  # the originals are only read
    assert sorted(p.name for p in dst.iterdir()) == ["a.mp4", "b.mp4"]  # no temporary or partial file left
    info = probe_video(dst / "a.mp4")
    assert (info.width, info.height, info.fps, info.num_frames) == (16, 16, 4.0, 12)
    # output frame j shows the source frame on screen at j / 4 s: source frame 2j
    frames, _ = decode_frames(dst / "a.mp4", (np.arange(12) + 0.5) / 4)
    np.testing.assert_array_equal(frame_index_of(frames), 2 * np.arange(12))
    # resumable: finished files are skipped, a removed one is redone
    (dst / "b.mp4").unlink()
    mtime = (dst / "a.mp4").stat().st_mtime_ns
    assert revtal_main(args) == 1
    assert "re-encoded 1 videos" in capsys.readouterr().out and (dst / "a.mp4").stat().st_mtime_ns == mtime
    assert probe_video(dst / "b.mp4").num_frames == 8


def test_the_source_folder_is_refused_as_destination(tmp_path, capsys):
    counter_video(tmp_path / "a.mp4", num_frames=8, fps=8.0)
    assert revtal_main(["prepare", "videos", str(tmp_path), str(tmp_path)]) == 2
    assert "originals are never overwritten" in capsys.readouterr().err
