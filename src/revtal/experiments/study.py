"""``revtal study``: the papers' comparison tables in miniature, on the synthetic dataset.

One shared setting for every run: the demo's recipe (:func:`revtal.engine.demo.demo_config`: a tiny video ViT over
32 frames × 32², 48 synthetic videos of 4 action classes, ActionFormer head), one generated dataset and one
"pretrained" backbone (:func:`revtal.engine.demo.pretrain_backbone`, clip classification). A *study entry* is a
named set of ``--set``-style overrides of that recipe (e.g. ``backbone.mode=hard``); each entry is trained end to
end with the ordinary :class:`revtal.engine.trainer.Trainer` for several seeds k = 0, 1, …: ``train.seed`` = k
(localizer/adapter initialisation, data order, augmentation) and, with ``--pretrain-per-seed``, a backbone pretrained
with seed k too (so the spread over seeds includes the pretraining's; without it every run shares pretraining
seed 0). Every entry of one seed starts from the same checkpoint, so entries are compared on equal footing. The
entries are grouped into tables that mirror the papers':

* Re²TAL Tab. 1 — head-only (frozen) vs conventional end-to-end vs Re² reversible finetuning;
* Dr²Net Tab. 2 — finetuning strategies: reversible from scratch, hard finetuning at the end point, Dr²Net vanilla
  (fixed α=1, β=0.1), Dr²Net dynamic with exact and with float memory-free backprop;
* Dr²Net Tab. 5/8 — the coefficient schedule: order (simultaneous, α first, β first) and policy (linear,
  exponential, logarithmic);
* Dr²Net Tab. 12 — backbone activation memory: conventional vs per-block checkpointing vs Dr²Net;
* LoSA Tab. 4a — LoSA and its ablations (no long-range adapter, no short-range adapter, plain sum fusion, gates
  starting at one) beside head-only and full finetuning.

Every run writes ``OUT/results/<entry>_seed<k>.json`` as soon as it finishes (average mAP, mAP per tIoU, bytes the
backbone saved for backward on one training step, median step time, …), so an interrupted study continues with
``--resume-partial``. Runs go seed-major (every entry's seed 0 first), so a study cut short still covers every
entry. At the end ``OUT/study.json`` and ``OUT/study.md`` hold mean ± sample std over seeds per entry and table.

Float memory-free backprop (``backbone.backprop=reversible``) entries run with the reconstruction monitor in
*record-only* mode (``monitor_tolerance`` = 1e30: never falls back, but logs the measured relative reconstruction
error every ``monitor_every`` steps), so "float" really means float and the result says how accurate it was.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# -------------------------------------------------------------------------------------------------- the entries

# float reversible runs: check one stage's reconstruction every 10 steps, record the error, never switch backprop
_RECORD_FLOAT_ERROR = ("backbone.monitor_every=10", "backbone.monitor_tolerance=1e30")
# LoSA's adapters are new modules trained from scratch: give them the head's learning rate, not the backbone's
_LOSA = ("backbone.mode=losa", "backbone.losa.clip_frames=8", "optim.backbone_lr=1e-3")


@dataclass(frozen=True)
class StudyEntry:
    name: str
    description: str
    overrides: tuple[str, ...] = ()
    headline: bool = False  # one of the headline comparisons: always runs the full --seeds


ENTRIES: tuple[StudyEntry, ...] = (
    StudyEntry("frozen", "head only on frozen pretrained features", ("backbone.mode=frozen",), headline=True),
    StudyEntry("conventional", "full end-to-end finetuning, plain autograd", ("backbone.mode=conventional",),
               headline=True),
    StudyEntry("re2", "Re²TAL: rewired to α=0, β=1, float reversible backprop",
               ("backbone.mode=re2", "backbone.backprop=reversible", *_RECORD_FLOAT_ERROR), headline=True),
    StudyEntry("scratch", "reversible (α=0.3, β=0.7) from random initialisation, exact",
               ("backbone.mode=scratch", "backbone.backprop=exact"), headline=True),
    StudyEntry("hard", "hard finetune: pretrained weights at fixed α=0.3, β=0.7, exact",
               ("backbone.mode=hard", "backbone.alpha=0.3", "backbone.beta=0.7", "backbone.backprop=exact"),
               headline=True),
    StudyEntry("dr2net_vanilla", "Dr²Net vanilla: fixed α=1, β=0.1, exact",
               ("backbone.mode=hard", "backbone.alpha=1.0", "backbone.beta=0.1", "backbone.backprop=exact")),
    StudyEntry("dr2net_vanilla_float", "Dr²Net vanilla: fixed α=1, β=0.1, float",
               ("backbone.mode=hard", "backbone.alpha=1.0", "backbone.beta=0.1", "backbone.backprop=reversible",
                *_RECORD_FLOAT_ERROR)),
    StudyEntry("dr2net", "Dr²Net dynamic (1, 0.1) → (0.3, 0.7), linear, simultaneous, exact",
               ("backbone.mode=dr2net", "backbone.backprop=exact"), headline=True),
    StudyEntry("dr2net_autograd", "Dr²Net dynamic, plain autograd through the same coupling (stores activations)",
               ("backbone.mode=dr2net", "backbone.backprop=vanilla")),
    StudyEntry("dr2net_start_1_8", "Dr²Net dynamic from (1, 1/8) instead of (1, 0.1 → 13/128), exact",
               ("backbone.mode=dr2net", "backbone.backprop=exact", "backbone.schedule.beta0=0.125")),
    StudyEntry("dr2net_drop_path", "Dr²Net dynamic, exact, stochastic depth 0.1 in the backbone",
               ("backbone.mode=dr2net", "backbone.backprop=exact", "backbone.options.drop_path_rate=0.1")),
    StudyEntry("conventional_drop_path", "conventional finetuning, stochastic depth 0.1 in the backbone",
               ("backbone.mode=conventional", "backbone.options.drop_path_rate=0.1")),
    StudyEntry("dr2net_float", "Dr²Net dynamic, float reversible backprop",
               ("backbone.mode=dr2net", "backbone.backprop=reversible", *_RECORD_FLOAT_ERROR)),
    StudyEntry("order_alpha_first", "schedule order: α first, then β (exact)",
               ("backbone.mode=dr2net", "backbone.schedule.order=alpha_first")),
    StudyEntry("order_beta_first", "schedule order: β first, then α (exact)",
               ("backbone.mode=dr2net", "backbone.schedule.order=beta_first")),
    StudyEntry("policy_exponential", "schedule policy: exponential (slow start), exact",
               ("backbone.mode=dr2net", "backbone.schedule.policy=exponential")),
    StudyEntry("policy_logarithmic", "schedule policy: logarithmic (fast start), exact",
               ("backbone.mode=dr2net", "backbone.schedule.policy=logarithmic")),
    StudyEntry("checkpoint", "conventional with per-block activation checkpointing", ("backbone.mode=checkpoint",)),
    StudyEntry("losa", "LoSA: short + long adapters, gated fusion, gates start at 0", _LOSA),
    StudyEntry("losa_wide", "LoSA with wide adapters (width = backbone width, bottleneck 1)",
               (*_LOSA, "backbone.losa.bottleneck=1.0")),
    StudyEntry("losa_no_long", "LoSA without the long-range adapters", (*_LOSA, "backbone.losa.use_long=false")),
    StudyEntry("losa_no_short", "LoSA without the short-range adapters", (*_LOSA, "backbone.losa.use_short=false")),
    StudyEntry("losa_sum", "LoSA, plain sum fusion (no gates, no projection)", (*_LOSA, "backbone.losa.fusion=sum")),
    StudyEntry("losa_gate_one", "LoSA, gates start at 1", (*_LOSA, "backbone.losa.gate_init=one")),
)
ENTRY_BY_NAME = {e.name: e for e in ENTRIES}

# named base-recipe overrides (``--setting``), applied before ``--set``
SETTINGS: dict[str, tuple[str, ...]] = {
    "miniature": (),  # the demo's dataset: 48 training and 16 validation videos
    # as many training videos (48) and 96 validation videos instead of 16: one run's mAP is measured on 6x the
    # actions at the same training cost
    "precise": ("data.synthetic.videos=144", "data.synthetic.val_fraction=0.6667"),
}


@dataclass(frozen=True)
class StudyTable:
    name: str
    title: str
    entries: tuple[str, ...]
    reference: str  # the entry every other row is compared with, seed by seed
    rows: dict = field(default_factory=dict)  # entry → row label shown in the table (default: the entry's name)


TABLES: tuple[StudyTable, ...] = (
    StudyTable("re2tal_tab1", "Re²TAL Tab. 1 — transfer vs end-to-end vs reversible end-to-end",
               ("frozen", "conventional", "re2"), reference="conventional"),
    StudyTable("dr2net_tab2", "Dr²Net Tab. 2 — finetuning strategies for a reversible network",
               ("scratch", "hard", "dr2net_vanilla", "dr2net_vanilla_float", "dr2net", "dr2net_autograd",
                "dr2net_float"),
               reference="dr2net"),
    StudyTable("dr2net_vs_conventional", "Dr²Net vs conventional finetuning: what moves the gap",
               ("conventional", "dr2net", "dr2net_autograd", "dr2net_start_1_8", "dr2net_vanilla", "hard",
                "dr2net_drop_path", "conventional_drop_path"), reference="conventional"),
    StudyTable("dr2net_tab5_8", "Dr²Net Tab. 5/8 — coefficient schedule: order and policy",
               ("dr2net", "order_alpha_first", "order_beta_first", "policy_exponential", "policy_logarithmic"),
               reference="dr2net", rows={"dr2net": "dr2net (linear, simultaneous)"}),
    StudyTable("dr2net_tab12", "Dr²Net Tab. 12 — backbone activation memory",
               ("conventional", "checkpoint", "re2", "dr2net", "frozen"), reference="conventional"),
    StudyTable("losa_tab4a", "LoSA Tab. 4a — adapters and their ablations",
               ("frozen", "conventional", "losa", "losa_wide", "losa_no_long", "losa_no_short", "losa_sum", "losa_gate_one"),
               reference="losa", rows={"frozen": "head only (frozen)", "conventional": "full finetune"}),
)
TABLE_BY_NAME = {t.name: t for t in TABLES}


def select_entries(spec: str | None) -> list[StudyEntry]:
    """Entries named in a comma-separated list of entry and table names (all entries when empty), in study order."""
    if not spec:
        return list(ENTRIES)
    wanted: set[str] = set()
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if token in ENTRY_BY_NAME:
            wanted.add(token)
        elif token in TABLE_BY_NAME:
            wanted.update(TABLE_BY_NAME[token].entries)
        else:
            raise ValueError(
                f"--entries: unknown entry or table {token!r}; entries: {', '.join(ENTRY_BY_NAME)}; "
                f"tables: {', '.join(TABLE_BY_NAME)}"
            )
    return [e for e in ENTRIES if e.name in wanted]


# ---------------------------------------------------------------------------------------------- shared settings

def base_config(out: Path, quick: bool = False, epochs: int | None = None, overrides: tuple[str, ...] = ()):
    """The demo recipe (``quick``: a seconds-long tiny one for tests), with ``epochs`` overriding the length and
    everything tied to it (evaluation at the end, warmup, the Dr²Net schedule's end point at 60 %), then the
    ``--set``-style ``overrides`` of a study setting and of the command line."""
    from revtal.engine.demo import demo_config

    values: dict = {"backbone.losa": {"clip_frames": 8}}
    if quick:  # shrink the model too, so that a test of several entries stays within seconds
        values.update({
            "backbone.options.depth": 2, "backbone.options.embed_dim": 32,
            "backbone.losa": {"clip_frames": 4, "dim": 32},
            "localizer.options.embed_dim": 32, "localizer.options.head_dim": 32, "localizer.options.num_heads": 2,
            "localizer.options.window_size": 3, "localizer.options.num_branch_blocks": 1,
            "localizer.options.regression_ranges": [[0, 2], [2, 10000]],
            "data.cache_mb": 16,
        })
    if epochs is not None:
        if epochs <= 0:
            raise ValueError(f"--epochs must be positive, got {epochs}")
        values.update({"optim.epochs": epochs, "optim.warmup_epochs": min(1.0, epochs / 4), "eval.every": epochs,
                       "backbone.schedule.end_epoch": max(1.0, 0.6 * epochs)})
    config = demo_config(out, quick=quick).with_values(values, source="revtal study")
    return config.with_overrides(overrides, source="revtal study --setting/--set") if overrides else config


def run_overrides(entry: StudyEntry, quick: bool) -> list[str]:
    overrides = list(entry.overrides)
    if quick:  # the tiny quick video has 8 frames: LoSA clips of 4
        overrides = [o.replace("backbone.losa.clip_frames=8", "backbone.losa.clip_frames=4") for o in overrides]
    return overrides


# ----------------------------------------------------------------------------------------------------- one run

def result_path(out: Path, entry: str, seed: int) -> Path:
    return out / "results" / f"{entry}_seed{seed}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # a result file either exists complete or not at all


def run_entry(entry: StudyEntry, seed: int, base_yaml: Path, out: Path, quick: bool, pretrain: dict,
              progress: bool, keep_checkpoints: bool) -> dict:
    """Train one entry at one seed from the shared base recipe; returns its result record."""
    from revtal.engine.config import load_config
    from revtal.engine.trainer import Trainer

    run_dir = out / "runs" / f"{entry.name}_seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted attempt: start clean (the trainer appends to its CSV log)
    overrides = run_overrides(entry, quick) + [f"train.seed={seed}", f"train.out_dir={run_dir}",
                                               f"backbone.pretrained={pretrain['checkpoint']}"]
    record: dict = {"entry": entry.name, "seed": seed, "pretrain_seed": pretrain.get("seed"),
                    "description": entry.description, "overrides": overrides}
    started = time.perf_counter()
    try:
        config = load_config(base_yaml, overrides)
        trainer = Trainer(config, progress=progress)
        history = trainer.fit()
    except Exception as err:  # noqa: BLE001 — a diverging or failing configuration is a result too; the study goes on
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
                      wall_time_s=time.perf_counter() - started)
        return record
    last = history[-1]
    record.update(
        status="ok",
        average_mAP=float(last.metrics["average_mAP"]),
        mAP=[float(v) for v in last.metrics["mAP"]],
        tiou=list(last.metrics["tiou"]),
        final_loss=last.loss,
        # measured on each epoch's first step; the minimum leaves out steps that also stored a verification copy
        # (the exact-backprop self-check of the very first step, a float reconstruction check)
        backbone_saved_bytes=int(min(h.backbone_memory_bytes for h in history)),
        epoch_saved_bytes=[int(h.backbone_memory_bytes) for h in history],
        memory_kind=history[0].memory_kind,
        # each epoch reports its median step; the median of those is robust to a few epochs slowed by other load
        step_time_s=float(np.median([h.step_time_s for h in history])),
        epoch_step_times_s=[h.step_time_s for h in history],
        alpha_beta_end=[last.alpha, last.beta] if last.alpha is not None else None,
        parameters=trainer.model.parameter_counts(),
        wall_time_s=time.perf_counter() - started,
        epochs=config.optim.epochs,
    )
    if trainer.monitor is not None:
        errors = [r.relative_error for r in trainer.monitor.history]
        record["float_reconstruction"] = {
            "checks": len(errors),
            "max_relative_error": max(errors) if errors else None,
            "median_relative_error": float(np.median(errors)) if errors else None,
            "fallbacks": len(trainer.monitor.events),
        }
    if not keep_checkpoints:
        for checkpoint in run_dir.glob("*.pt"):
            checkpoint.unlink()
    return record


# ----------------------------------------------------------------------------------------------- aggregation

def load_results(out: Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for path in sorted((out / "results").glob("*.json")):
        record = json.loads(path.read_text())
        results.setdefault(record["entry"], []).append(record)
    for records in results.values():
        records.sort(key=lambda r: r["seed"])
    return results


def summarize(records: list[dict]) -> dict:
    ok = [r for r in records if r.get("status") == "ok"]
    scores = np.array([r["average_mAP"] for r in ok], dtype=np.float64)
    summary = {
        "seeds": [r["seed"] for r in ok],
        "failed": [{"seed": r["seed"], "error": r.get("error", "")} for r in records if r.get("status") != "ok"],
        "average_mAP": [float(s) for s in scores],
        "average_mAP_mean": float(scores.mean()) if len(scores) else None,
        # sample standard deviation over seeds (undefined for a single seed)
        "average_mAP_std": float(scores.std(ddof=1)) if len(scores) > 1 else None,
        "mAP_mean": np.mean([r["mAP"] for r in ok], axis=0).tolist() if ok else None,
        "backbone_saved_bytes": int(np.median([r["backbone_saved_bytes"] for r in ok])) if ok else None,
        "memory_kind": ok[0]["memory_kind"] if ok else None,
        "step_time_s": float(np.median([r["step_time_s"] for r in ok])) if ok else None,
        "learnable_parameters": ok[0]["parameters"]["learnable"] if ok else None,
    }
    floats = [r["float_reconstruction"] for r in ok if r.get("float_reconstruction", {}).get("checks")]
    if floats:
        summary["float_max_relative_error"] = max(f["max_relative_error"] for f in floats)
    return summary


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


TABLE_HEADER = ("| entry | what | average mAP (%) mean ± std | seeds | per seed | Δ vs {reference} (paired: ± std [95 % CI]) "
                "| backbone saved for backward | step (ms) | learnable params |")


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


def paired_difference(summary: dict, reference: dict) -> PairedDifference | None:
    """Per-seed (entry − reference) average mAP over the seeds both entries finished.

    Runs of one seed share the pretrained backbone, the data order and the head's initialisation, so the per-seed
    difference removes the part of the seed-to-seed spread the two entries have in common."""
    theirs = dict(zip(reference["seeds"], reference["average_mAP"]))
    diffs = np.array([v - theirs[s] for s, v in zip(summary["seeds"], summary["average_mAP"]) if s in theirs])
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


def format_noise_floor(floors: dict[str, PairedDifference]) -> str:
    if not floors:
        return "noise floor: not measured (run checkpoint and conventional, or dr2net and dr2net_autograd)"
    why = {f"{e} − {r}": what for e, r, what in NOISE_PROBES}
    lines = ["noise floor (the same maths, rounded differently):"]
    for name, paired in floors.items():
        spread = "one seed" if paired.std is None else f"paired std {100 * paired.std:.2f} points"
        lines.append(f"- {name} ({why[name]}): {_format_difference(paired)}; {spread}")
    return "\n".join(lines)


def table_differences(table: StudyTable, summaries: dict[str, dict]) -> dict[str, dict]:
    """Every entry of ``table`` against its reference, seed by seed (JSON form)."""
    reference = summaries.get(table.reference)
    if reference is None:
        return {}
    pairs = {name: paired_difference(summaries[name], reference) for name in table.entries
             if name != table.reference and name in summaries}
    return {name: paired.to_dict() for name, paired in pairs.items() if paired is not None}


def plot_differences(summaries: dict[str, dict], path: Path) -> Path | None:
    """One panel per table: each entry's paired difference from the table's reference with its 95 % interval
    (a forest plot), the noise floor's ±paired std shaded; returns the file, or None with nothing to draw."""
    panels = [(t, table_differences(t, summaries)) for t in TABLES]
    panels = [(t, d) for t, d in panels if any(v["ci95"] for v in d.values())]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    axes[-1, 0].set_xlabel("paired difference in average mAP (points), mean and 95 % CI; red: CI excludes 0")
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
        header = TABLE_HEADER.format(reference=table.rows.get(table.reference, table.reference))
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
                std = summary["average_mAP_std"]
                score = _pct(summary["average_mAP_mean"]) + ("" if std is None else f" ± {100 * std:.1f}")
                per_seed = ", ".join(_pct(s) for s in summary["average_mAP"])
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


# ------------------------------------------------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    names = ", ".join(ENTRY_BY_NAME)
    parser.add_argument("--out", default="runs/study", help="where results go (default runs/study)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per headline entry (default 3)")
    parser.add_argument("--extra-seeds", type=int, default=None,
                        help="training seeds for the other entries (default: --seeds)")
    parser.add_argument("--entries", default="", help=f"comma-separated entries or tables (default all). "
                        f"Tables: {', '.join(TABLE_BY_NAME)}. Entries: {names}")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per run (default: the demo's 8)")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="clip-classification pretraining steps")
    parser.add_argument("--pretrain-per-seed", action="store_true",
                        help="pretrain one backbone per seed (training seed k uses pretraining seed k); default: "
                        "one backbone (pretraining seed 0) shared by every run")
    parser.add_argument("--pretrained", default="", help="use this backbone checkpoint instead of pretraining one")
    parser.add_argument("--resume-partial", action="store_true",
                        help="skip runs whose OUT/results/<entry>_seed<k>.json already exists")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's last.pt / best.pt")
    parser.add_argument("--quiet-runs", action="store_true", help="no per-epoch progress bars inside runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice; 1 is often faster on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="a tiny seconds-long smoke setting (tests)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained side by side, one process each (default 1); with --jobs, --threads is per "
                        "process (default: the CPUs divided by --jobs). Results do not depend on it; step times do")
    parser.add_argument("--setting", choices=list(SETTINGS), default="miniature",
                        help="the dataset every run trains and is scored on: miniature (the demo's 48 + 16 videos, "
                        "default) or precise (48 training videos too, 96 validation videos)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of every run's base recipe (as `revtal train --set`), after --setting")


def pretrained_checkpoint(args, base, out: Path, seed: int) -> dict:
    """The backbone checkpoint for runs of training seed ``seed``: ``--pretrained``, else pretraining seed
    ``seed`` (``--pretrain-per-seed``) or 0, made once under OUT/pretrain/seed<k>/ and reused afterwards."""
    from revtal.engine.demo import pretrain_backbone

    if args.pretrained:
        if not Path(args.pretrained).is_file():
            raise FileNotFoundError(f"--pretrained: no such backbone checkpoint {args.pretrained!r}")
        return {"checkpoint": str(Path(args.pretrained).resolve()), "source": "--pretrained", "seed": None}
    pretrain_seed = seed if args.pretrain_per_seed else 0
    steps = 3 if args.quick else args.pretrain_steps
    folder = out / "pretrain" / f"seed{pretrain_seed}"
    info_path = folder / "pretrain.json"
    if info_path.exists():  # pretraining is deterministic: reuse it when it was made with the same settings
        info = json.loads(info_path.read_text())
        if info.get("steps") == steps and Path(info["checkpoint"]).is_file():
            return info
    info = pretrain_backbone(base, folder, steps=steps, seed=pretrain_seed)
    info["seed"] = pretrain_seed
    _write_json(info_path, info)
    accuracy = info["clip_accuracy"]
    tqdm_write(f"pretrained backbone (seed {pretrain_seed}): clip accuracy {100 * accuracy:.1f}% → {info['checkpoint']}")
    return info


def run_job(job: tuple, progress: bool = False) -> dict:
    """One planned run, its result written to OUT/results as soon as it finishes (in a worker process with --jobs)."""
    entry_name, seed, base_yaml, out, quick, pretrain, keep_checkpoints = job
    record = run_entry(ENTRY_BY_NAME[entry_name], seed, Path(base_yaml), Path(out), quick, pretrain,
                       progress=progress, keep_checkpoints=keep_checkpoints)
    _write_json(result_path(Path(out), entry_name, seed), record)
    return record


def _init_job_process(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def tqdm_write(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from revtal.engine.config import dump_config
    from revtal.engine.data import load_dataset_annotations, resolve_dataset

    if args.threads is not None:
        if args.threads <= 0:
            raise SystemExit(f"revtal study: --threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    entries = select_entries(args.entries)
    if args.seeds <= 0 or (args.extra_seeds is not None and args.extra_seeds <= 0):
        raise SystemExit("revtal study: --seeds and --extra-seeds must be positive")
    if args.jobs <= 0:
        raise SystemExit(f"revtal study: --jobs must be positive, got {args.jobs}")
    extra = args.seeds if args.extra_seeds is None else args.extra_seeds
    started = time.perf_counter()
    print(f"revtal study → {out}  ({len(entries)} entries; torch {torch.__version__}, {torch.get_num_threads()} threads)")

    base = base_config(out, quick=args.quick, epochs=args.epochs, overrides=(*SETTINGS[args.setting], *args.overrides))
    base = resolve_dataset(base, out)  # one dataset for every run
    annotations = load_dataset_annotations(base)
    print(f"dataset: {len(annotations.videos)} videos, {len(annotations.classes)} classes → {base.data.annotations}")
    base = base.with_values({"backbone.pretrained": pretrained_checkpoint(args, base, out, seed=0)["checkpoint"]})
    base_yaml = out / "base_config.yaml"
    dump_config(base, base_yaml)

    # seed-major order: every entry's first seed before anyone's second, so a study cut short covers all entries
    plan = [(entry, seed) for seed in range(max(args.seeds, extra))
            for entry in entries if seed < (args.seeds if entry.headline else extra)]
    todo = [(e, s) for e, s in plan if not (args.resume_partial and result_path(out, e.name, s).exists())]
    print(f"{len(plan)} runs planned, {len(plan) - len(todo)} already done" if args.resume_partial else
          f"{len(plan)} runs planned")
    pretrains = {seed: pretrained_checkpoint(args, base, out, seed) for seed in sorted({s for _, s in todo})}
    bar = tqdm(total=len(todo), desc="study", unit="run", dynamic_ncols=True)

    def report(record: dict) -> None:
        bar.update(1)
        if record["status"] == "ok":
            tqdm.write(f"{record['entry']} seed {record['seed']}: average mAP {100 * record['average_mAP']:.2f}, "
                       f"step {1000 * record['step_time_s']:.0f} ms, {record['wall_time_s']:.0f} s")
        else:
            tqdm.write(f"{record['entry']} seed {record['seed']}: FAILED — {record['error']}")

    jobs = [(entry.name, seed, str(base_yaml), str(out), bool(args.quick), pretrains[seed], args.keep_checkpoints)
            for entry, seed in todo]
    if args.jobs == 1:
        for job in jobs:
            bar.set_postfix_str(f"{job[0]} seed {job[1]}")
            report(run_job(job, progress=not args.quiet_runs))
    else:  # one process per run; each finished run's result is already on disk when it is reported
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_job_process, initargs=(threads,)) as pool:
            for future in as_completed([pool.submit(run_job, job) for job in jobs]):
                report(future.result())
    bar.close()

    results = load_results(out)
    summaries = {name: summarize(records) for name, records in results.items() if name in ENTRY_BY_NAME}
    floor = noise_floor(summaries)
    study = {
        "setting": {"base_config": str(base_yaml), "epochs": base.optim.epochs, "quick": bool(args.quick),
                    "seeds": args.seeds, "extra_seeds": extra, "pretrain_per_seed": bool(args.pretrain_per_seed),
                    "pretrain": sorted((json.loads(p.read_text()) for p in (out / "pretrain").glob("seed*/pretrain.json")),
                                       key=lambda info: info["seed"]),
                    "dataset": {"videos": len(annotations.videos), "classes": len(annotations.classes)}},
        "entries": {name: {"description": ENTRY_BY_NAME[name].description,
                           "overrides": list(ENTRY_BY_NAME[name].overrides), **summary}
                    for name, summary in summaries.items()},
        "tables": {t.name: {"title": t.title, "entries": list(t.entries), "reference": t.reference,
                            "paired_vs_reference": table_differences(t, summaries)} for t in TABLES},
        "noise_floor": {name: paired.to_dict() for name, paired in floor.items()},
        "wall_time_s": time.perf_counter() - started,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
    }
    _write_json(out / "study.json", study)
    tables = format_tables(summaries)
    (out / "study.md").write_text(
        f"# revtal study ({base.optim.epochs} epochs per run)\n\n"
        "average mAP: ActivityNet detection mAP averaged over tIoU 0.3:0.1:0.7 (THUMOS thresholds), mean ± sample "
        "std over training seeds; memory: bytes the backbone saved for backward on one training step (median over "
        "seeds); Δ: mean ± std over seeds of the per-seed difference from the table's reference entry, in "
        "percentage points, with the 95 % confidence interval of its mean (Student's t); step: median step time."
        "\n\n" + format_noise_floor(floor) + "\n\n" + tables
    )
    print(format_noise_floor(floor))
    figure = plot_differences(summaries, out / "study.png")
    if figure is not None:
        print(f"wrote {figure}")
    print(tables)
    print(f"done in {study['wall_time_s'] / 60:.1f} min → {out / 'study.md'}, {out / 'study.json'}")
    failed = sum(len(s["failed"]) for s in summaries.values())
    return 1 if failed and not any(s["seeds"] for s in summaries.values()) else 0
