"""The study's classification runs: Dr²Net's action-recognition tables in miniature, and Re²TAL's re-pretraining.

* **Action recognition** (Dr²Net Tab. 2 AR column, Tab. 6, 8, 11: VideoMAE ViT-S finetuned on Something-Something
  v2). In miniature the "pretrained" backbone is the study's own (the demo's clip-classification pretraining on the 4
  TAL classes, up/down and blink/steady) and the downstream task is a harder one, as SSv2 is after Kinetics: 12
  synthetic classes (all six patterns, six colours), trimmed clips of 4–8 s, 8 frames by uniform (TSN) sampling as
  VideoMAE samples SSv2, two test clips. VideoMAE's recipe in miniature: layer-wise lr decay 0.75, label smoothing
  0.1, drop path 0.1 (mixup and cutmix are left out: 8 epochs of 192 clips are too few for them to pay off). The
  Dr²Net schedule is updated every η = 2 iterations and ends after 1/8 of training (Dr²Net supp. §B: every 2
  iterations, ending at epoch 5 of 40).
* **Re²TAL's re-pretraining** (§4): before a TAL run of ``re2`` mode, the pretrained backbone is rewired and
  finetuned on clip classification of the TAL classes (the pretraining task) for a few epochs; its best checkpoint
  is the TAL run's ``backbone.pretrained``. The same step in ``conventional`` mode is the control: it gives the
  unrewired backbone the same extra training.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import numpy as np

from revtal.engine.classification import ClassificationTrainer, resolve_clips
from revtal.engine.config import Config, config_from_dict

AR_CLASSES = 12
# the schedule of Dr²Net's AR runs: every 2 iterations, ending at 1/8 of training
AR_SCHEDULE = {"alpha0": 1.0, "alpha_end": 0.3, "beta0": 0.1, "beta_end": 0.7, "every": 2, "unit": "iteration"}


_EXACT = ("backbone.backprop=exact",)
# (name, description, overrides of ar_config) of the action-recognition entries; the tables are in the catalogue
AR_ENTRY_SPECS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ar_frozen", "AR: linear probe on the frozen backbone", ("backbone.mode=frozen",)),
    ("ar_conventional", "AR: conventional end-to-end finetuning", ("backbone.mode=conventional",)),
    ("ar_scratch", "AR: reversible (α=0.3, β=0.7) from random initialisation, exact",
     ("backbone.mode=scratch", *_EXACT)),
    ("ar_hard", "AR: hard finetune at fixed α=0.3, β=0.7 from the pretrained weights, exact",
     ("backbone.mode=hard", "backbone.alpha=0.3", "backbone.beta=0.7", *_EXACT)),
    ("ar_dr2net", "AR: Dr²Net dynamic (1, 0.1) → (0.3, 0.7), η = 2 iterations, simultaneous, exact",
     ("backbone.mode=dr2net", *_EXACT)),
    ("ar_dr2net_vanilla", "AR: Dr²Net vanilla, fixed α=1, β=0.1, exact",
     ("backbone.mode=hard", "backbone.alpha=1.0", "backbone.beta=0.1", *_EXACT)),
    ("ar_order_alpha_first", "AR: schedule α first, then β (exact)",
     ("backbone.mode=dr2net", "backbone.schedule.order=alpha_first", *_EXACT)),
    ("ar_order_beta_first", "AR: schedule β first, then α (exact)",
     ("backbone.mode=dr2net", "backbone.schedule.order=beta_first", *_EXACT)),
    *((f"ar_eta_{eta}", f"AR: Dr²Net dynamic, α/β updated every η = {eta} iterations (exact)",
       ("backbone.mode=dr2net", f"backbone.schedule.every={eta}", *_EXACT)) for eta in (1, 5, 10, 20)),
)


def classification_recipe(tal: Config, out: Path, *, classes: int, epochs: int, quick: bool,
                          mode: str = "dr2net") -> Config:
    """A ``task: classification`` recipe on synthetic clips with the backbone (name, options, pretrained, backprop)
    of the TAL recipe ``tal``; 8-frame clips as the study's pretraining uses."""
    per_class, val_per_class, frames = (2, 1, 4) if quick else (16, 8, 8)
    data = {"num_frames": frames, "img_size": tal.data.img_size, "batch_size": 8, "cache_mb": 64,
            "mean": list(tal.data.mean), "std": list(tal.data.std)}
    backbone = {"name": tal.backbone.name, "options": dict(tal.backbone.options), "pretrained": tal.backbone.pretrained,
                "mode": mode, "backprop": tal.backbone.backprop,
                "schedule": {**AR_SCHEDULE, "end_epoch": max(epochs / 8, 0.25)},
                "losa": {"clip_frames": frames // 2}}
    return config_from_dict({
        "task": "classification",
        "data": data,
        "classification": {"sampling": "uniform", "test_clips": 2, "label_smoothing": 0.1, "train_scale": [0.6, 1.0],
                           "synthetic": {"classes": classes, "train_per_class": per_class,
                                         "val_per_class": val_per_class, "size": tal.data.synthetic.size,
                                         "seed": tal.data.synthetic.seed}},
        "backbone": {**backbone, "options": {**backbone["options"], "drop_path_rate": 0.1}},
        "optim": {"epochs": epochs, "backbone_lr": 5e-4, "head_lr": 1e-3, "layer_decay": 0.75,
                  "warmup_epochs": min(1.0, epochs / 4)},
        "eval": {"every": epochs},
        "train": {"out_dir": str(out), "seed": tal.train.seed, "log_every": 10},
    }, source="revtal study (classification)")


def ar_config(tal: Config, out: Path, quick: bool, epochs: int | None) -> Config:
    """The base recipe of the action-recognition entries (their overrides apply on top), with its synthetic clips
    written once under ``out/data`` for every run."""

    config = classification_recipe(tal, out, classes=4 if quick else AR_CLASSES, epochs=1 if quick else (epochs or 8),
                                   quick=quick)
    return resolve_clips(config, out)


def classification_record(config: Config, progress: bool) -> dict:
    """Train ``config`` (task classification) and describe the run as the study records TAL runs; the score is
    top-1 accuracy."""

    started = time.perf_counter()
    trainer = ClassificationTrainer(config, progress=progress)
    history = trainer.fit()
    last = history[-1]
    return {
        "status": "ok", "metric": "top1", "score": float(last.metrics["top1"]), "top1": float(last.metrics["top1"]),
        "top5": float(last.metrics["top5"]), "mean_class_accuracy": float(last.metrics["mean_class_accuracy"]),
        "final_loss": last.loss,
        "backbone_saved_bytes": int(min(h.backbone_saved_bytes for h in history)),
        "memory_kind": "saved_bytes",
        "step_time_s": float(np.median([h.step_time_s for h in history])),
        "alpha_beta_end": [last.alpha, last.beta] if last.alpha is not None else None,
        "parameters": trainer.model.parameter_counts(),
        "wall_time_s": time.perf_counter() - started,
        "epochs": config.optim.epochs,
    }


def run_classification_entry(overrides: list[str], base: Config, run_dir: Path, progress: bool) -> dict:
    try:
        config = base.with_overrides([*overrides, f"train.out_dir={run_dir}"], source="revtal study (entry)")
        return classification_record(config, progress)
    except Exception as err:  # noqa: BLE001 — a failing configuration is a result too; the study goes on
        return {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def repretrained_checkpoint(tal: Config, out: Path, mode: str, seed: int, quick: bool, progress: bool) -> dict:
    """Re²TAL's middle step for the TAL runs of training seed ``seed``: the backbone of ``tal.backbone.pretrained``
    finetuned in ``mode`` on clip classification of the TAL classes; made once under OUT/repretrain/<mode>_seed<k>
    (deterministic) and reused."""

    folder = out / "repretrain" / f"{mode}_seed{seed}"
    info_path = folder / "repretrain.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("source") == tal.backbone.pretrained and Path(info["checkpoint"]).is_file():
            return info
    config = classification_recipe(tal, folder / "run", classes=tal.data.synthetic.classes, epochs=1 if quick else 4,
                                   quick=quick, mode=mode)
    config = resolve_clips(config, out)  # one set of clips for every mode and seed
    config = config.with_values({"train.seed": seed}, source="revtal study (re-pretraining)")
    trainer = ClassificationTrainer(config, overwrite=True, progress=progress)
    history = trainer.fit()
    info = {"checkpoint": str(folder / "run" / "best.pt"), "source": tal.backbone.pretrained, "mode": mode,
            "seed": seed, "epochs": config.optim.epochs, "top1": history[-1].metrics["top1"]}
    folder.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info, indent=2))
    return info


def prepare_clips(tal: Config, out: Path, quick: bool, *, ar: bool, repretrain: bool) -> None:
    """Write the synthetic clips the selected entries need (the AR set, the re-pretraining set) once."""

    if ar:
        ar_config(tal, out / "ar", quick, None)
    if repretrain:
        resolve_clips(classification_recipe(tal, out, classes=tal.data.synthetic.classes, epochs=1, quick=quick), out)
