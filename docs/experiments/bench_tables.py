"""The tables of docs/BENCHMARKS.md from a merged benchmark JSON (``revtal bench report --json``).

    PYTHONPATH=src python docs/experiments/bench_tables.py docs/bench/cpu_2026-12-02b.json > tables.md

One table per shape (model, depth, clip, clips, batch), one row per mode: saved bytes and process peak with their
ratios to conventional and checkpointing, the peak's breakdown (what the forward kept, the backward transient
above kept + parameter gradients) and the single measured step's time.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from revtal.bench.configs import record_label
from revtal.bench.report import MIB, _mode_label, _mode_rank


def _mib(value) -> str:
    return "–" if value is None else f"{value / MIB:.1f}"


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def tables(records: list[dict]) -> str:
    groups = defaultdict(list)
    for r in records:
        groups[(r["model"], r["depth"] or 0, r["frames"], r["img_size"], r.get("clips", 1), r["batch"])].append(r)
    out = []
    for (model, depth, frames, size, clips, batch), rows in sorted(groups.items()):
        grads = max((r.get("param_grad_bytes") or 0) for r in rows)
        title = f"**{model}{f' d{depth}' if depth else ''}, {clips} clip{'s' * (clips > 1)} of {frames} × {size}², batch {batch}**"
        out += [f"{title} (G = {_mib(grads)} MiB)", "",
                "| mode | saved MiB | ×conv | ×ckpt | peak MiB | ×conv | ×ckpt | kept MiB | transient MiB | step s (1 step) |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sorted(rows, key=lambda r: _mode_rank(record_label(r))):
            kept = r.get("after_forward_bytes")
            backward = r.get("backward_peak_bytes")
            transient = (None if kept is None or backward is None or r["mode"] == "conventional"
                         else backward - kept - (r.get("param_grad_bytes") or 0))
            out.append(" | ".join([
                f"| {_mode_label(r)}", _mib(r["saved_bytes"]), _ratio(r.get("saved_vs_conventional")),
                _ratio(r.get("saved_vs_checkpoint")), _mib(r["peak_bytes"]), _ratio(r.get("peak_vs_conventional")),
                _ratio(r.get("peak_vs_checkpoint")), _mib(kept), _mib(transient), f"{r['step_time_s']:.1f} |",
            ]))
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(json.load(open(sys.argv[1]))["records"]))
