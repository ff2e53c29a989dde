"""The main job in its smoke setting: every stage runs and writes what it promises."""

import json

from revtal.cli import main as cli_main


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
    assert "| dr2net | exact |" in (tmp_path / "summary.md").read_text()


def test_two_demo_runs_print_the_same_results_table(tmp_path):
    # each run generates its own dataset and pretrains its own backbone, as two clean clones do
    for name in ("a", "b"):
        assert cli_main(["demo", "--quick", "--out", str(tmp_path / name), "--modes", "dr2net,frozen"]) == 0
    tables = [(tmp_path / name / "summary.md").read_text().split("\n\n")[0] for name in ("a", "b")]
    assert tables[0].startswith("| mode |") and tables[0] == tables[1]
