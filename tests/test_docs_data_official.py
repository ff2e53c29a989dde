"""docs/DATA.md, "THUMOS-14 and ActivityNet from their official files", followed literally on tiny files in the official
formats: its `revtal prepare` commands run, and the recipes its `revtal train` commands name find what they wrote."""

import json
import re
import shlex
from pathlib import Path

from data_fixtures import counter_video
from revtal.cli import main as revtal_main
from revtal.data.annotations import load_annotations
from revtal.data.dataset import VIDEO_EXTENSIONS, find_media_files
from revtal.engine.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "DATA.md"


def section() -> str:
    text = DATA.read_text(encoding="utf-8")
    start = text.index("## THUMOS-14 and ActivityNet from their official files")
    end = re.compile(r"^## ", re.M).search(text, start + 1)
    return text[start: end.start() if end else len(text)]


def commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", section(), re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("revtal ")]


def official_files(root: Path) -> None:
    """THUMOS-14: per-class txt files and raw videos; ActivityNet: the v1-3 JSON and v_ID downloads."""
    thumos = root / "data/thumos"
    for folder, subset in (("TH14_Temporal_annotations_validation/annotation", "val"),
                           ("TH14_Temporal_Annotations_Test/annotations/annotation", "test")):
        (thumos / "annotations" / folder).mkdir(parents=True)
        video = f"video_{'validation' if subset == 'val' else 'test'}_0000001"
        (thumos / "annotations" / folder / f"HighJump_{subset}.txt").write_text(f"{video}  0.5  1.5\n")
        (thumos / "annotations" / folder / f"Ambiguous_{subset}.txt").write_text(f"{video} 2.0 2.5\n")
        counter_video(thumos / "raw_videos" / f"{video}.mp4", num_frames=24, fps=8.0, size=32)
    anet = root / "data/anet"
    anet.mkdir(parents=True)
    database = {vid: {"subset": subset, "duration": 3.0, "resolution": "32x32", "url": "https://www.youtube.com/...",
                      "annotations": [{"segment": [0.5, 2.0], "label": "Long jump"}] if subset != "testing" else []}
                for vid, subset in (("abc", "training"), ("def", "validation"), ("ghi", "testing"))}
    (anet / "activity_net.v1-3.min.json").write_text(json.dumps(
        {"version": "VERSION 1.3", "taxonomy": [], "database": database}))
    for vid in database:
        counter_video(anet / "raw_videos" / f"v_{vid}.mp4", num_frames=24, fps=8.0, size=32)


def test_data_md_commands_prepare_what_the_recipes_read(tmp_path, monkeypatch):
    official_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    steps = commands()
    prepares = [c for c in steps if c[1] == "prepare"]
    trains = [c for c in steps if c[1] == "train"]
    assert len(prepares) == 3 and len(trains) == 2
    for command in prepares:
        assert revtal_main(command[1:]) == 0, command
    thumos = load_annotations("data/thumos/thumos14.json")
    assert thumos.classes == ["HighJump"] and set(thumos.subsets) == {"validation", "testing"}
    assert len(thumos.videos["video_test_0000001"].ambiguous) == 1
    for command in trains:  # the recipes in a checkout whose data folder the commands filled
        (tmp_path / command[2]).parent.mkdir(exist_ok=True)
        (tmp_path / command[2]).write_text((ROOT / command[2]).read_text())
        config = load_config(command[2], [])
        annotations = load_annotations(config.data.annotations)
        for subset in (config.data.train_subset, config.data.val_subset):
            wanted = annotations.subset(subset).videos
            assert set(find_media_files(config.data.video_dir, wanted, VIDEO_EXTENSIONS)) == set(wanted), command
