"""Timeline plots of detections (with ground truth when known): one PNG per video."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


def plot_timeline(
    path: str | Path,
    video_id: str,
    duration: float,
    detections: Sequence[dict],
    classes: Sequence[str],
    ground_truth: Sequence[dict] | None = None,
    min_score: float = 0.2,
    max_detections: int = 8,
) -> Path:
    """Ground truth on the top lane, then the best detections one lane each (score on the left, colour = class,
    opacity = score). ``detections``/``ground_truth``: ActivityNet-style dicts with ``segment``, ``label`` (and
    ``score``)."""
    colours = {name: plt.cm.tab10(i % 10) for i, name in enumerate(classes)}
    shown = shown_detections(detections, min_score, max_detections)
    lanes = (["ground truth"] if ground_truth is not None else []) + [f"{d['score']:.2f}" for d in shown]
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.32 * max(len(lanes), 1)))
    top = len(lanes) - 1
    if ground_truth is not None:
        for g in ground_truth:
            s, e = g["segment"]
            ax.broken_barh([(s, e - s)], (top - 0.4, 0.8), color=colours.get(g["label"], "grey"))
            ax.text(s + 0.01 * duration, top, g["label"], va="center", fontsize=6, clip_on=True)
        top -= 1
    for lane, d in zip(range(top, -1, -1), shown):
        s, e = d["segment"]
        ax.broken_barh([(s, e - s)], (lane - 0.35, 0.7), color=colours.get(d["label"], "grey"),
                       alpha=0.35 + 0.65 * min(1.0, d["score"]))
        ax.text(s + 0.01 * duration, lane, d["label"], va="center", fontsize=6, clip_on=True)
    ax.set_xlim(0, duration)
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(list(reversed(lanes)), fontsize=7)
    ax.set_xlabel("seconds")
    used = sorted({d["label"] for d in shown} | {g["label"] for g in (ground_truth or [])})
    ax.legend(handles=[Patch(color=colours.get(c, "grey"), label=c) for c in used], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(timeline_title(video_id, detections, min_score, max_detections), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def shown_detections(detections: Sequence[dict], min_score: float, max_detections: int) -> list[dict]:
    """The detections a timeline draws: the best ``max_detections`` of those scoring at least ``min_score``."""
    return sorted((d for d in detections if d["score"] >= min_score), key=lambda d: -d["score"])[:max_detections]


def timeline_title(video_id: str, detections: Sequence[dict], min_score: float, max_detections: int) -> str:
    """Says what the plot draws out of what the results hold, so an empty plot is not read as no detections."""
    passing = sum(d["score"] >= min_score for d in detections)
    drawn = min(passing, max_detections)
    title = f"{video_id}: {drawn} of {len(detections)} detections drawn"
    if passing > drawn:
        title += f" (the best {drawn} of {passing} with score ≥ {min_score:g})"
    else:
        title += f" (those with score ≥ {min_score:g})"
    if detections and not passing:
        title += f"; the best score is {max(d['score'] for d in detections):.2f} (lower the score threshold to draw them)"
    return title + "; lane label = score"

