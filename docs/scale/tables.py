"""Print docs/SCALE.md's tables from the `revtal plan` JSON in docs/scale/ (run from the repo root).

    python docs/scale/tables.py            # the recipe grid: every recipe in configs/ × every plan mode
    python docs/scale/tables.py NAME ...   # one row per mode of docs/scale/NAME.json: peak [reserved], split, phase

A cell is ``peak GiB: the GPU sizes it fits`` (fits = modelled reserved + 0.75 GiB <= the GPU), "n/a" where the mode
does not apply to the recipe, "not run" where the JSON lacks it. tests/test_scale_docs.py checks that SCALE.md
holds what this prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GIB = 2 ** 30
# single-mode runs of a recipe kept apart because of their cost (ViT-g/14 over 48 clips: ~8 CPU-minutes per mode)
EXTRA_RUNS = {"thumos_vitg_dr2net": ("vitg_dr2net_exact_48",)}
MODES = ("frozen", "conventional", "checkpoint", "re2", "hard", "dr2net:reversible", "dr2net:exact", "scratch", "losa",
         "unipt", "st_adapter", "aim")


def load(name: str) -> dict | None:
    path = HERE / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def cell(record: dict | None) -> str:
    if record is None:
        return "not run"
    if "skipped" in record:
        return "n/a"
    sizes = [gib for gib, fits in record["fits"].items() if fits]
    return f"{record['peak_bytes'] / GIB:.2f}: {'/'.join(sizes) if sizes else 'none'}"


def recipe_grid() -> str:
    lines = ["| recipe | " + " | ".join(MODES) + " | source |", "| --- " * (len(MODES) + 2) + "|"]
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        results = [r for r in (load(name) for name in (f"recipe_{config.stem}", *EXTRA_RUNS.get(config.stem, ()))) if r]
        records = {r["mode"]: r for result in results for r in result["records"]}
        commits = dict.fromkeys(_commit(result) for result in results)
        lines.append(f"| `{config.stem}` | " + " | ".join(cell(records.get(m)) for m in MODES)
                     + f" | {', '.join(commits) or '—'} |")
    return "\n".join(lines)


def _commit(result: dict) -> str:
    source = result.get("machine", {}).get("revtal_source")
    if not source:
        return "—"
    return source["commit"][:7] + ("+modified" if source["modified"] else "")


def modes_table(name: str) -> str:
    result = load(name)
    if result is None:
        return f"{name}: not run (`bash docs/scale/run.sh {name}`)"
    lines = ["| mode | peak GiB [reserved] | params | grads | optimizer | activations | phase |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["records"]:
        if "skipped" in r:
            lines.append(f"| {r['mode']} | n/a | | | | | |")
            continue
        g = lambda key: f"{r[key] / GIB:.2f}"
        lines.append(f"| {r['mode']} | {g('peak_bytes')} [{g('reserved_bytes')}] | {g('params_bytes')} | "
                     f"{g('grads_bytes')} | {g('optimizer_bytes')} | {g('activation_bytes')} | {r['phase']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(modes_table(n) for n in sys.argv[1:]) if sys.argv[1:] else recipe_grid())
