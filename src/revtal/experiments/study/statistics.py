"""The study's statistics: mean and sample std over seeds per entry, the paired (per-seed) difference from a
table's reference with its 95 % confidence interval (Student's t), and the noise floor: the spread of pairs of
entries that compute the same maths and differ only in rounding."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from revtal.experiments.study.catalogue import StudyTable

def record_score(record: dict) -> float:
    """A run's score: average mAP for TAL runs, the record's ``score`` (top-1 accuracy) for classification runs."""
    return float(record["score"] if "score" in record else record["average_mAP"])


def summarize(records: list[dict]) -> dict:
    """Mean and sample std over seeds of the runs' scores, kept under ``average_mAP*`` for TAL entries and under
    ``top1*`` (with ``top5*``) for classification entries; ``scores`` holds them whichever they are."""
    ok = [r for r in records if r.get("status") == "ok"]
    metric = ok[0].get("metric", "average_mAP") if ok else "average_mAP"
    scores = np.array([record_score(r) for r in ok], dtype=np.float64)
    summary = {
        "seeds": [r["seed"] for r in ok],
        "failed": [{"seed": r["seed"], "error": r.get("error", "")} for r in records if r.get("status") != "ok"],
        "metric": metric,
        "scores": [float(s) for s in scores],
        "score_mean": float(scores.mean()) if len(scores) else None,
        # sample standard deviation over seeds (undefined for a single seed)
        "score_std": float(scores.std(ddof=1)) if len(scores) > 1 else None,
        "backbone_saved_bytes": int(np.median([r["backbone_saved_bytes"] for r in ok])) if ok else None,
        "memory_kind": ok[0]["memory_kind"] if ok else None,
        "step_time_s": float(np.median([r["step_time_s"] for r in ok])) if ok else None,
        "learnable_parameters": ok[0]["parameters"]["learnable"] if ok else None,
    }
    summary.update({metric: summary["scores"], f"{metric}_mean": summary["score_mean"],
                    f"{metric}_std": summary["score_std"]})
    if metric == "average_mAP":
        summary["mAP_mean"] = np.mean([r["mAP"] for r in ok], axis=0).tolist() if ok else None
    else:
        top5 = np.array([r["top5"] for r in ok], dtype=np.float64)
        summary.update(top5=[float(v) for v in top5], top5_mean=float(top5.mean()) if len(top5) else None)
    floats = [r["float_reconstruction"] for r in ok if r.get("float_reconstruction", {}).get("checks")]
    if floats:
        summary["float_max_relative_error"] = max(f["max_relative_error"] for f in floats)
    return summary


# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (beyond: the Cornish-Fisher expansion)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (for 95 % two-sided intervals)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class PairedDifference:
    """(entry − reference) average mAP over the seeds both finished: mean, sample std, count, and the 95 %
    confidence interval of the mean (Student's t; None below two seeds)."""

    mean: float
    std: float | None
    n: int

    @property
    def ci95(self) -> tuple[float, float] | None:
        if self.std is None:
            return None
        half = t_quantile_975(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def verdict(self) -> str:
        """What the interval says about "entry differs from reference": higher, lower, or not resolved."""
        ci = self.ci95
        if ci is None:
            return "one seed"
        return "higher" if ci[0] > 0 else "lower" if ci[1] < 0 else "not resolved"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95": self.ci95, "verdict": self.verdict()}


def _scores(summary: dict) -> list[float]:
    return summary["scores"] if "scores" in summary else summary["average_mAP"]


def paired_difference(summary: dict, reference: dict) -> PairedDifference | None:
    """Per-seed (entry − reference) average mAP over the seeds both entries finished.

    Runs of one seed share the pretrained backbone, the data order and the head's initialisation, so the per-seed
    difference removes the part of the seed-to-seed spread the two entries have in common."""
    theirs = dict(zip(reference["seeds"], _scores(reference)))
    diffs = np.array([v - theirs[s] for s, v in zip(summary["seeds"], _scores(summary)) if s in theirs])
    if not len(diffs):
        return None
    return PairedDifference(float(diffs.mean()), float(diffs.std(ddof=1)) if len(diffs) > 1 else None, len(diffs))


# pairs of entries that compute the same maths and differ only in rounding: their spread over seeds is what
# rounding alone moves a result by, so differences of that size between other entries are noise
NOISE_PROBES = (("checkpoint", "conventional", "per-block recompute"),
                ("dr2net_autograd", "dr2net", "plain autograd instead of exact arithmetic"))


def noise_floor(summaries: dict[str, dict]) -> dict[str, PairedDifference]:
    """Each noise probe both of whose entries ran: ``"checkpoint − conventional"`` → its paired difference."""
    floors = {}
    for entry, reference, _ in NOISE_PROBES:
        if entry in summaries and reference in summaries:
            paired = paired_difference(summaries[entry], summaries[reference])
            if paired is not None:
                floors[f"{entry} − {reference}"] = paired
    return floors


def table_differences(table: StudyTable, summaries: dict[str, dict]) -> dict[str, dict]:
    """Every entry of ``table`` against its reference, seed by seed (JSON form)."""
    reference = summaries.get(table.reference)
    if reference is None:
        return {}
    pairs = {name: paired_difference(summaries[name], reference) for name in table.entries
             if name != table.reference and name in summaries}
    return {name: paired.to_dict() for name, paired in pairs.items() if paired is not None}
