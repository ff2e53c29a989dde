"""Running the study: one run per (entry, seed) with the ordinary trainer, each result written as soon as it
finishes (so an interrupted study continues), then the summaries, tables and plot."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from revtal.engine.config import dump_config, load_config
from revtal.engine.datasets import load_dataset_annotations, resolve_dataset
from revtal.engine.trainer import Trainer
from revtal.experiments.demo import pretrain_backbone
from revtal.experiments.study.classification import ar_config, prepare_clips, repretrained_checkpoint, run_classification_entry
from revtal.experiments.study.catalogue import ENTRY_BY_NAME, SETTINGS, TABLES, StudyEntry, base_config, run_overrides, select_entries
from revtal.experiments.study.report import format_noise_floor, format_tables, plot_differences
from revtal.experiments.study.statistics import noise_floor, summarize, table_differences

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
    run_dir = out / "runs" / f"{entry.name}_seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted attempt: start clean (the trainer appends to its CSV log)
    overrides = run_overrides(entry, quick) + [f"train.seed={seed}", f"train.out_dir={run_dir}",
                                               f"backbone.pretrained={pretrain['checkpoint']}"]
    record: dict = {"entry": entry.name, "seed": seed, "pretrain_seed": pretrain.get("seed"),
                    "description": entry.description, "overrides": overrides}
    if entry.task == "classification":
        tal = load_config(base_yaml, [f"train.seed={seed}", f"backbone.pretrained={pretrain['checkpoint']}"])
        record.update(run_classification_entry([*run_overrides(entry, quick), f"train.seed={seed}"],
                                               ar_config(tal, out / "ar", quick, None), run_dir, progress))
        _remove_checkpoints(run_dir, keep_checkpoints)
        return record
    started = time.perf_counter()
    try:
        if entry.repretrain:  # Re²TAL's middle step, made once per mode and seed, then the TAL run starts from it
            tal = load_config(base_yaml, [f"train.seed={seed}", f"backbone.pretrained={pretrain['checkpoint']}"])
            repretrained = repretrained_checkpoint(tal, out, entry.repretrain, seed, quick, progress)
            overrides.append(f"backbone.pretrained={repretrained['checkpoint']}")
            record.update(overrides=overrides, repretrain=repretrained)
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
        metric="average_mAP",
        score=float(last.metrics["average_mAP"]),
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
    _remove_checkpoints(run_dir, keep_checkpoints)
    return record


def _remove_checkpoints(run_dir: Path, keep: bool) -> None:
    if not keep:
        for checkpoint in run_dir.glob("*.pt"):
            checkpoint.unlink()


def load_results(out: Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for path in sorted((out / "results").glob("*.json")):
        record = json.loads(path.read_text())
        results.setdefault(record["entry"], []).append(record)
    for records in results.values():
        records.sort(key=lambda r: r["seed"])
    return results


# ------------------------------------------------------------------------------------------------------- CLI

@dataclass(frozen=True)
class StudyOptions:
    """What a study runs (``revtal study``'s options): see :mod:`revtal.commands.study` for each one."""

    out: str = "runs/study"
    seeds: int = 3
    extra_seeds: int | None = None
    entries: str = ""
    epochs: int | None = None
    pretrain_steps: int = 300
    pretrain_per_seed: bool = False
    pretrained: str = ""
    resume_partial: bool = False
    keep_checkpoints: bool = False
    quiet_runs: bool = False
    threads: int | None = None
    quick: bool = False
    jobs: int = 1
    setting: str = "miniature"
    overrides: tuple[str, ...] = ()


def pretrained_checkpoint(options: StudyOptions, base, out: Path, seed: int) -> dict:
    """The backbone checkpoint for runs of training seed ``seed``: ``--pretrained``, else pretraining seed
    ``seed`` (``--pretrain-per-seed``) or 0, made once under OUT/pretrain/seed<k>/ and reused afterwards."""
    if options.pretrained:
        if not Path(options.pretrained).is_file():
            raise FileNotFoundError(f"--pretrained: no such backbone checkpoint {options.pretrained!r}")
        return {"checkpoint": str(Path(options.pretrained).resolve()), "source": "--pretrained", "seed": None}
    pretrain_seed = seed if options.pretrain_per_seed else 0
    steps = 3 if options.quick else options.pretrain_steps
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
    torch.set_num_threads(threads)


def tqdm_write(message: str) -> None:
    tqdm.write(message)


def run_study(options: StudyOptions) -> int:
    """Run (or continue, ``resume_partial``) the study into ``options.out``; returns 1 if every run failed."""
    if options.threads is not None:
        if options.threads <= 0:
            raise SystemExit(f"revtal study: --threads must be positive, got {options.threads}")
        torch.set_num_threads(options.threads)
    out = Path(options.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    entries = select_entries(options.entries)
    if options.seeds <= 0 or (options.extra_seeds is not None and options.extra_seeds <= 0):
        raise SystemExit("revtal study: --seeds and --extra-seeds must be positive")
    if options.jobs <= 0:
        raise SystemExit(f"revtal study: --jobs must be positive, got {options.jobs}")
    extra = options.seeds if options.extra_seeds is None else options.extra_seeds
    started = time.perf_counter()
    print(f"revtal study → {out}  ({len(entries)} entries; torch {torch.__version__}, {torch.get_num_threads()} threads)")

    base = base_config(out, quick=options.quick, epochs=options.epochs, overrides=(*SETTINGS[options.setting], *options.overrides))
    base = resolve_dataset(base, out)  # one dataset for every run
    annotations = load_dataset_annotations(base)
    print(f"dataset: {len(annotations.videos)} videos, {len(annotations.classes)} classes → {base.data.annotations}")
    base = base.with_values({"backbone.pretrained": pretrained_checkpoint(options, base, out, seed=0)["checkpoint"]})
    base_yaml = out / "base_config.yaml"
    dump_config(base, base_yaml)
    # the classification entries' clips, written here once rather than by parallel runs racing for them
    prepare_clips(base, out, options.quick, ar=any(e.task == "classification" for e in entries),
                  repretrain=any(e.repretrain for e in entries))

    # seed-major order: every entry's first seed before anyone's second, so a study cut short covers all entries
    plan = [(entry, seed) for seed in range(max(options.seeds, extra))
            for entry in entries if seed < (options.seeds if entry.headline else extra)]
    todo = [(e, s) for e, s in plan if not (options.resume_partial and result_path(out, e.name, s).exists())]
    print(f"{len(plan)} runs planned, {len(plan) - len(todo)} already done" if options.resume_partial else
          f"{len(plan)} runs planned")
    pretrains = {seed: pretrained_checkpoint(options, base, out, seed) for seed in sorted({s for _, s in todo})}
    bar = tqdm(total=len(todo), desc="study", unit="run", dynamic_ncols=True)

    def report(record: dict) -> None:
        bar.update(1)
        if record["status"] == "ok":
            metric = "average mAP" if record.get("metric", "average_mAP") == "average_mAP" else record["metric"]
            tqdm.write(f"{record['entry']} seed {record['seed']}: {metric} {100 * record['score']:.2f}, "
                       f"step {1000 * record['step_time_s']:.0f} ms, {record['wall_time_s']:.0f} s")
        else:
            tqdm.write(f"{record['entry']} seed {record['seed']}: FAILED — {record['error']}")

    jobs = [(entry.name, seed, str(base_yaml), str(out), bool(options.quick), pretrains[seed], options.keep_checkpoints)
            for entry, seed in todo]
    if options.jobs == 1:
        for job in jobs:
            bar.set_postfix_str(f"{job[0]} seed {job[1]}")
            report(run_job(job, progress=not options.quiet_runs))
    else:  # one process per run; each finished run's result is already on disk when it is reported
        threads = options.threads or max(1, (os.cpu_count() or 1) // options.jobs)
        with ProcessPoolExecutor(options.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_job_process, initargs=(threads,)) as pool:
            for future in as_completed([pool.submit(run_job, job) for job in jobs]):
                report(future.result())
    bar.close()

    results = load_results(out)
    summaries = {name: summarize(records) for name, records in results.items() if name in ENTRY_BY_NAME}
    floor = noise_floor(summaries)
    study = {
        "setting": {"base_config": str(base_yaml), "epochs": base.optim.epochs, "quick": bool(options.quick),
                    "seeds": options.seeds, "extra_seeds": extra, "pretrain_per_seed": bool(options.pretrain_per_seed),
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
