"""Benchmark records as a Markdown table and as memory-vs-depth / memory-vs-frames plots (the analogue of Re²TAL's
Fig. 7: memory of each training mode as the network deepens or the clip lengthens)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from revtal.bench.configs import MODES, record_label

MIB = 2**20


def _mode_rank(label: str) -> int:
    return MODES.index(label) if label in MODES else len(MODES)


def _clips(record: dict) -> int:
    return record.get("clips", 1)  # records written before clips existed are one-clip runs


def _sort_key(record: dict) -> tuple:
    return (
        record["model"], record["frames"], record["img_size"], record["batch"], _clips(record), record["depth"] or 0,
        _mode_rank(record_label(record)),
    )


def _mib(value) -> str:
    return "–" if value is None else f"{value / MIB:.1f}"


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _mode_label(record: dict) -> str:
    label = record_label(record)
    if "alpha" in record and label.startswith("dr2net"):
        label = f"{label} ({record['alpha']:g}, {record['beta']:g})"
        stored = record.get("exact_stored_bits_per_element")
        if stored:  # what exact mode kept per element: float output + information buffer, and log2(1/β) per branch
            label += f" {max(stored)} b/el, {record['exact_bits_per_branch']:.2f} b/branch"
    return label


def markdown_table(records: list[dict]) -> str:
    """One row per record; ratios are to conventional (×conv) and to checkpointing (×ckpt) at the same shape; step
    time is the median over all timed steps (with their minimum and count when the run pooled them)."""
    cuda = any(r.get("cuda_max_allocated_bytes") is not None for r in records)
    head = ["model", "mode", "depth", "clip", "clips", "batch", "saved MiB", "×conv", "×ckpt", "peak MiB", "×conv", "×ckpt"]
    if cuda:
        head += ["CUDA max MiB", "×conv", "×ckpt"]
    head += ["step s", "×conv", "×ckpt"]
    pooled = any("step_time_min_s" in r for r in records)
    if pooled:
        head += ["min s", "steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in sorted(records, key=_sort_key):
        row = [
            r["model"], _mode_label(r), "–" if r["depth"] is None else str(r["depth"]),
            f"{r['frames']}×{r['img_size']}²", str(_clips(r)), str(r["batch"]),
            _mib(r["saved_bytes"]), _ratio(r.get("saved_vs_conventional")), _ratio(r.get("saved_vs_checkpoint")),
            _mib(r["peak_bytes"]), _ratio(r.get("peak_vs_conventional")), _ratio(r.get("peak_vs_checkpoint")),
        ]
        if cuda:
            row += [
                _mib(r.get("cuda_max_allocated_bytes")), _ratio(r.get("cuda_vs_conventional")),
                _ratio(r.get("cuda_vs_checkpoint")),
            ]
        row += [f"{r['step_time_s']:.3f}", _ratio(r.get("time_vs_conventional")), _ratio(r.get("time_vs_checkpoint"))]
        if pooled:
            row += [f"{r['step_time_min_s']:.3f}" if "step_time_min_s" in r else "–", str(len(r.get("step_times_s", [])))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _field(record: dict, name: str):
    return _clips(record) if name == "clips" else record.get(name)


def _panels(records: list[dict]) -> list[tuple[str, str, float]]:
    """(quantity, axis label, unit divisor) of each panel of a plot row."""
    panels = [
        ("saved_bytes", "saved for backward (MiB, log scale)", MIB), ("peak_bytes", "process peak − baseline (MiB)", MIB),
    ]
    if any(r.get("cuda_max_allocated_bytes") is not None for r in records):
        panels.append(("cuda_max_allocated_bytes", "CUDA max allocated (MiB)", MIB))
    panels.append(("step_time_s", "step time (s, median)", 1.0))
    return panels


def _plot(records: list[dict], x_field: str, fixed: tuple[str, ...], x_label: str, path: Path) -> Path | None:
    """One row of panels per (model, fixed values) series group, one line per mode."""
    # matplotlib loads when a plot is drawn, not with the module (a second of import); Agg set before pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if _field(r, x_field) is not None:
            groups[(r["model"], *(_field(r, f) for f in fixed))].append(r)
    if not groups:
        return None
    # the group with the most distinct x values per model: a sweep, not a single point
    best: dict[str, tuple] = {}
    for key, group in groups.items():
        count = len({_field(r, x_field) for r in group})
        if key[0] not in best or count > len({_field(r, x_field) for r in groups[best[key[0]]]}):
            best[key[0]] = key
    panels = _panels(records)
    rows = sorted(best.values())
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(5 * len(panels), 3.8 * len(rows)), squeeze=False)
    for row, key in enumerate(rows):
        group = groups[key]
        by_mode: dict[str, list[dict]] = defaultdict(list)
        for r in group:
            by_mode[_mode_label(r)].append(r)
        fixed_text = ", ".join(f"{f}={v}" for f, v in zip(fixed, key[1:]))
        for col, (quantity, label, unit) in enumerate(panels):
            ax = axes[row][col]
            for mode, series in sorted(by_mode.items(), key=lambda item: _mode_rank(record_label(item[1][0]))):
                series = sorted((r for r in series if r.get(quantity) is not None), key=lambda r: _field(r, x_field))
                if series:
                    ax.plot([_field(r, x_field) for r in series], [r[quantity] / unit for r in series], marker="o", label=mode)
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
            ax.set_title(f"{key[0]} ({fixed_text})", fontsize=9)
            values = [r[quantity] for r in group if r.get(quantity)]
            # saved bytes span orders of magnitude across modes; so does the peak once conventional's activations
            # of many clips dwarf the memory-saving modes'
            if quantity == "saved_bytes" or (quantity != "step_time_s" and values and max(values) > 8 * min(values)):
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if col == 1:  # the peak panel's upper left stays clear (every mode's peak starts alike)
                ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(records: list[dict], out_dir: str | Path) -> list[Path]:
    """``memory_vs_depth.png`` (ViT depth sweep at one clip size), ``memory_vs_frames.png`` (clip-length sweep at one
    depth) and ``memory_vs_clips.png`` (clips per video at one depth and clip size); returns the files written."""
    out_dir = Path(out_dir)
    written = [
        _plot(records, "depth", ("frames", "img_size", "batch", "clips"), "transformer blocks",
              out_dir / "memory_vs_depth.png"),
        _plot(records, "frames", ("depth", "img_size", "batch", "clips"), "frames per clip",
              out_dir / "memory_vs_frames.png"),
        _plot(records, "clips", ("depth", "frames", "img_size", "batch"), "clips per video (one training step)",
              out_dir / "memory_vs_clips.png"),
    ]
    return [p for p in written if p is not None]
