"""Timeline plots of detections (with ground truth when known): one PNG per video."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_timeline(
    path: str | Path,
    video_id: str,
    duration: float,
    detections: Sequence[dict],
    classes: Sequence[str],
    ground_truth: Sequence[dict] | None = None,
    min_score: float = 0.2,
    max_detections: int = 20,
) -> Path:
    """``detections``/``ground_truth``: ActivityNet-style dicts with ``segment``, ``label`` (and ``score``)."""
    colours = {name: plt.cm.tab10(i % 10) for i, name in enumerate(classes)}
    shown = sorted((d for d in detections if d["score"] >= min_score), key=lambda d: -d["score"])[:max_detections]
    rows = (["ground truth"] if ground_truth is not None else []) + ["detections"]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.9 * len(rows)))
    y = len(rows) - 1
    if ground_truth is not None:
        for g in ground_truth:
            s, e = g["segment"]
            ax.broken_barh([(s, e - s)], (y - 0.35, 0.7), color=colours.get(g["label"], "grey"))
            ax.text(s, y, g["label"], va="center", fontsize=7)
        y -= 1
    for d in shown:
        s, e = d["segment"]
        ax.broken_barh([(s, e - s)], (y - 0.35, 0.7), color=colours.get(d["label"], "grey"), alpha=max(0.25, d["score"]))
        ax.text(s, y + 0.4, f"{d['label']} {d['score']:.2f}", fontsize=6, va="bottom")
    ax.set_xlim(0, duration)
    ax.set_ylim(-0.6, len(rows) - 0.2)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(reversed(rows)))
    ax.set_xlabel("seconds")
    ax.set_title(f"{video_id} — detections with score >= {min_score} (top {max_detections})", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
