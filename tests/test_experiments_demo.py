"""The main job in its smoke setting: every stage runs and writes what it promises."""

import json
import re
from pathlib import Path

from revtal.cli import main as cli_main
from revtal.experiments.demo import STUDY_RESULT

STUDY_DOC = Path(__file__).resolve().parents[1] / "docs" / "STUDY.md"


def test_demo_quick_writes_summary_detections_and_plots(tmp_path):
    assert cli_main(["demo", "--quick", "--out", str(tmp_path), "--modes", "dr2net,conventional"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["mode"] for r in summary["runs"]] == ["dr2net", "conventional"]
    for run in summary["runs"]:
        assert 0.0 <= run["average_mAP"] <= 1.0 and run["backbone_saved_bytes"] > 0
    dr2net, conventional = summary["runs"]
    assert dr2net["backbone_saved_bytes"] < conventional["backbone_saved_bytes"]
    assert 0.0 <= summary["pretrain"]["clip_accuracy"] <= 1.0
    pngs = sorted((tmp_path / "detections").glob("*.png"))
    assert pngs and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    text = (tmp_path / "summary.md").read_text()
    assert "| dr2net | exact |" in text
    validation = summary["dataset"]["validation_videos"]
    assert validation > 0
    assert (f"One seed, scored on {validation} validation videos" in text
            and "dr2net − conventional -0.8 points, paired 95 % interval [-2.5, +0.9]" in text)


def test_the_demo_quotes_the_study_result_the_doc_records():
    section = STUDY_DOC.read_text(encoding="utf-8").split("## The precise setting", 1)[1].split("\n## ", 1)[0]
    assert f"{STUDY_RESULT['validation_videos']} validation" in section
    table = section.split("#### Dr²Net vs conventional finetuning", 1)[1].split("\n#", 1)[0]
    assert "Δ vs conventional" in table
    # the dr2net row: ... | Δ vs conventional as "mean ± std [low, high] (n=seeds)" | ...
    (row,) = re.findall(r"^\| dr2net \|.*$", table, re.M)
    mean, low, high, n = re.search(r"\| ([-+]?\d+\.\d) ± [\d.]+ \[([-+]?\d+\.\d), ([-+]?\d+\.\d)\] \(n=(\d+)\) \|", row).groups()
    assert (float(mean), (float(low), float(high)), int(n)) == \
        (STUDY_RESULT["mean"], STUDY_RESULT["ci95"], STUDY_RESULT["seeds"])
