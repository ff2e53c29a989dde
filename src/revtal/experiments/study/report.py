"""The study's report: the Markdown tables, the noise-floor paragraph and the forest plot of paired differences."""

from __future__ import annotations

from pathlib import Path

from revtal.experiments.study.catalogue import ENTRY_BY_NAME, TABLES
from revtal.experiments.study.statistics import (NOISE_PROBES, PairedDifference, noise_floor, paired_difference,
                                                 table_differences)

def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


TABLE_HEADER = ("| entry | what | {metric} mean ± std | seeds | per seed | Δ vs {reference} (paired: ± std [95 % CI]) "
                "| backbone saved for backward | step (ms) | learnable params |")


def format_noise_floor(floors: dict[str, PairedDifference]) -> str:
    if not floors:
        return "noise floor: not measured (run checkpoint and conventional, or dr2net and dr2net_autograd)"
    why = {f"{e} − {r}": what for e, r, what in NOISE_PROBES}
    lines = ["noise floor (the same maths, rounded differently):"]
    for name, paired in floors.items():
        spread = "one seed" if paired.std is None else f"paired std {100 * paired.std:.2f} points"
        lines.append(f"- {name} ({why[name]}): {_format_difference(paired)}; {spread}")
    return "\n".join(lines)


def plot_differences(summaries: dict[str, dict], path: Path) -> Path | None:
    """One panel per table: each entry's paired difference from the table's reference with its 95 % interval
    (a forest plot), the noise floor's ±paired std shaded; returns the file, or None with nothing to draw."""
    panels = [(t, table_differences(t, summaries)) for t in TABLES]
    panels = [(t, d) for t, d in panels if any(v["ci95"] for v in d.values())]
    if not panels:
        return None
    # matplotlib loads when a plot is drawn, not with the module (a second of import); Agg set before pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    floors = [p.std for p in noise_floor(summaries).values() if p.std]
    floor = 100 * max(floors) if floors else None
    heights = [max(1.2, 0.45 * len(d) + 0.9) for _, d in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights)), gridspec_kw={"height_ratios": heights},
                             squeeze=False)
    for ax, (table, diffs) in zip(axes[:, 0], panels):
        names = [n for n in table.entries if n in diffs][::-1]
        for row, name in enumerate(names):
            d = diffs[name]
            mean = 100 * d["mean"]
            if d["ci95"]:
                low, high = (100 * v for v in d["ci95"])
                ax.plot([low, high], [row, row], color="tab:blue", linewidth=2)
            ax.plot([mean], [row], "o", color="black" if d["verdict"] == "not resolved" else "tab:red")
        if floor:
            ax.axvspan(-floor, floor, color="0.9", zorder=0, label=f"noise floor ±{floor:.1f}")
        ax.axvline(0, color="0.4", linewidth=0.8)
        ax.set_yticks(range(len(names)), [f"{table.rows.get(n, n)} (n={diffs[n]['n']})" for n in names])
        ax.set_title(f"{table.title}: Δ vs {table.rows.get(table.reference, table.reference)}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("paired difference in points (TAL: average mAP; AR: top-1), mean and 95 % CI; "
                           "red: CI excludes 0")
    if floor:
        axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _format_difference(paired: PairedDifference | None) -> str:
    if paired is None:
        return ""
    text = f"{100 * paired.mean:+.1f}"
    if paired.std is not None:
        low, high = paired.ci95
        text += f" ± {100 * paired.std:.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
    return text + f" (n={paired.n})"


def format_tables(summaries: dict[str, dict]) -> str:
    lines = []
    for table in TABLES:
        header = TABLE_HEADER.format(reference=table.rows.get(table.reference, table.reference), metric=table.metric)
        lines += [f"### {table.title}", "", header, "| --- " * header.count(" | ") + "| --- |"]
        missing = []
        for name in table.entries:
            summary = summaries.get(name)
            if summary is None or (not summary["seeds"] and not summary["failed"]):
                missing.append(name)
                continue
            label = table.rows.get(name, name)
            entry = ENTRY_BY_NAME[name]
            if summary["seeds"]:
                std = summary.get("score_std", summary.get("average_mAP_std"))
                score = _pct(summary.get("score_mean", summary.get("average_mAP_mean"))) + (
                    "" if std is None else f" ± {100 * std:.1f}")
                if summary.get("top5_mean") is not None:
                    score += f" (top-5 {_pct(summary['top5_mean'])})"
                per_seed = ", ".join(_pct(s) for s in summary.get("scores", summary.get("average_mAP")))
                reference = summaries.get(table.reference)
                paired = paired_difference(summary, reference) if reference and name != table.reference else None
                delta = _format_difference(paired)
                memory = f"{summary['backbone_saved_bytes'] / 2**20:.2f} MiB"
                step = f"{1000 * summary['step_time_s']:.0f}"
                params = f"{summary['learnable_parameters']:,}"
            else:
                score, per_seed, delta, memory, step, params = "failed", "", "", "", "", ""
            if summary["failed"]:
                per_seed += f" ({len(summary['failed'])} failed)"
            if "float_max_relative_error" in summary:
                memory += f"; float reconstruction error ≤ {summary['float_max_relative_error']:.1e}"
            lines.append(f"| {label} | {entry.description} | {score} | {len(summary['seeds'])} | {per_seed} | "
                         f"{delta} | {memory} | {step} | {params} |")
        if missing:
            lines.append(f"\nnot run: {', '.join(missing)}")
        lines.append("")
    return "\n".join(lines)
