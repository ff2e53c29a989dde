"""docs/SCALE.md shows what the plan JSON in docs/scale/ hold (docs/scale/tables.py prints the tables)."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    spec = importlib.util.spec_from_file_location("scale_tables", ROOT / "docs" / "scale" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scale_md_recipe_grid_is_the_one_printed_from_the_json():
    assert _tables().recipe_grid() in (ROOT / "docs" / "SCALE.md").read_text()


def test_every_plan_json_named_in_scale_md_exists_and_has_a_run_sh_row():
    text = (ROOT / "docs" / "SCALE.md").read_text()
    run_sh = (ROOT / "docs" / "scale" / "run.sh").read_text()
    names = set(re.findall(r"docs/scale/([a-z0-9_]+)\.json", text)) | set(re.findall(r"\| `([a-z0-9_]+)\.json` \|", text))
    assert names
    for name in sorted(names):
        assert (ROOT / "docs" / "scale" / f"{name}.json").exists(), name
        if not name.endswith("_peak_storages"):
            assert re.search(rf"^\s*{name}\)|recipe_\*\)", run_sh, re.M) and (
                name.startswith("recipe_") or re.search(rf"^\s*{name}\)", run_sh, re.M)), name


def test_modes_table_reads_peak_and_split_in_gib():
    tables = _tables()
    record = {"mode": "re2", "peak_bytes": 3 * 2 ** 30, "reserved_bytes": 4 * 2 ** 30, "params_bytes": 2 ** 29,
              "grads_bytes": 0, "optimizer_bytes": 0, "activation_bytes": 5 * 2 ** 29, "phase": "backward",
              "fits": {"11": True, "24": True, "2": False}}
    assert tables.cell(record) == "3.00: 11/24"
    assert tables.cell({"mode": "aim", "skipped": "ViT only"}) == "n/a"
    assert tables.cell(None) == "not run"
