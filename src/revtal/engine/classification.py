"""``task: classification``: finetune a video backbone on trimmed clips, in any training mode.

The task Re²TAL re-pretrains its rewired backbone on (Kinetics-400, §4) and Dr²Net's action-recognition experiments
run (VideoMAE ViT-S on Something-Something v2, Tab. 2, 6, 8, 11). The backbone is prepared by the same
:class:`~revtal.engine.modes.TrainingMode` as for TAL (frozen = linear probe, conventional, checkpoint, re2, hard,
dr2net with its coefficient schedule, scratch, LoSA), its temporal features are averaged and one linear layer gives
the class scores (:class:`~revtal.backbones.classifier.ClipClassifier`, whose ``backbone.`` keys make a checkpoint
of this task loadable as ``backbone.pretrained`` of a TAL recipe).

What VideoMAE's finetuning adds on top of the optimiser is here too: layer-wise learning-rate decay
(``optim.layer_decay``), mixup / cutmix with label smoothing (``classification.*``; draws seeded by the step, so a
resumed run mixes the same way), drop path (a backbone option: ``backbone.options.drop_path_rate`` for ViTs,
``stochastic_depth_prob`` for Swin) and EMA (``optim.ema``). Evaluation averages the class probabilities of
``test_clips × test_crops`` views per video and writes ``eval.json``: ``top1``, ``top5``, ``num_classes``,
``mean_class_accuracy`` and ``per_class`` (class name → top-1 accuracy).

Checkpoints (``last.pt`` every epoch, ``best.pt`` at the best top-1) have the layout of the TAL trainer's
(:func:`~revtal.engine.run_state.training_state`), so ``--resume`` continues a run bit for bit on CPU. One process
(no DDP) in this version.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from revtal.backbones.classifier import ClipClassifier
from revtal.data.cliplists import ClipList, load_clip_list
from revtal.data.clips import ClipDataset, collate_clips
from revtal.data.dataset import build_loader
from revtal.data.mixup import MixupCutmix, soft_target_cross_entropy
from revtal.data.synthetic import generate_clip_dataset
from revtal.engine.config import Config, dump_config
from revtal.engine.modes import TrainingMode, get_mode
from revtal.engine.optim import ModelEMA, optimizer_step, recipe_optimizer, warmup_cosine
from revtal.engine.resume import check_resume_changes, config_changes
from revtal.engine.run_state import TrainingCheckpoint, epoch_line, save_epoch_end, training_state
from revtal.engine.rundir import claim_run_dir
from revtal.engine.runtime import autocast, resolve_device
from revtal.engine.trainer import MetricLog, enable_deterministic_algorithms, seed_everything
from revtal.evaluation.classification import average_views, classification_metrics
from revtal.utils.memory import SavedTensorMeter
from revtal.utils.progress import progress as progress_bar


class ClassificationModel(ClipClassifier):
    """A :class:`ClipClassifier` whose backbone runs as its training mode says (a frozen one under ``no_grad``)."""

    def __init__(self, extractor: nn.Module, num_classes: int, mode: TrainingMode, dropout: float = 0.0):
        super().__init__(extractor, num_classes, dropout)
        self.mode = mode
        self.measure_next_features = False
        self.last_saved_bytes: int | None = None

    @property
    def frozen_backbone(self) -> bool:
        return not self.mode.backbone_grad

    def train(self, mode: bool = True) -> "ClassificationModel":
        super().train(mode)
        self.mode.set_training(self.backbone, mode)
        return self

    def forward(self, video: Tensor) -> Tensor:
        if self.measure_next_features:
            self.measure_next_features = False
            with SavedTensorMeter(self.backbone) as meter:
                features = self.mode.features(self.backbone, video)
            self.last_saved_bytes = meter.bytes
        else:
            features = self.mode.features(self.backbone, video)
        return self.head(self.dropout(features.float().mean(-1)))

    def trainable_backbone(self) -> nn.Module | None:
        return None if self.frozen_backbone else self.backbone

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        learnable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if self.frozen_backbone:
            learnable -= sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)
        return {"total": total, "learnable": learnable}


def build_classifier(config: Config, num_classes: int, backbone_weights: dict | None = None) -> ClassificationModel:
    mode = get_mode(config.backbone.mode)
    extractor = mode.build_extractor(config.backbone, config.data.num_frames, config.data.img_size, backbone_weights)
    return ClassificationModel(extractor, num_classes, mode, config.classification.head_dropout)


# ------------------------------------------------------------------------------------------------------ data

def synthetic_clips_dir(config: Config, out_dir: Path) -> Path:
    s = config.classification.synthetic
    return Path(out_dir) / "data" / (f"clips_c{s.classes}_t{s.train_per_class}_v{s.val_per_class}_s{s.seed}_"
                                     f"{s.size}px_{s.fps:g}fps_{s.min_duration:g}-{s.max_duration:g}s")


def resolve_clips(config: Config, out_dir: str | Path) -> Config:
    """``config`` with its clip lists located: unchanged when ``classification.train_list`` is set, else the
    synthetic clips under ``out_dir/data`` (written the first time), so the saved config names its data."""
    c = config.classification
    if c.train_list:
        return config
    s = c.synthetic
    root = synthetic_clips_dir(config, Path(out_dir))
    if not (root / "classes.txt").exists():
        generate_clip_dataset(root, num_classes=s.classes, train_per_class=s.train_per_class,
                              val_per_class=s.val_per_class, seed=s.seed, size=s.size, fps=s.fps,
                              duration_range=(s.min_duration, s.max_duration))
    return config.with_values({"classification.train_list": str(root / "train.csv"),
                               "classification.val_list": str(root / "val.csv"),
                               "classification.classes": str(root / "classes.txt")}, source="synthetic clips")


def load_clip_lists(config: Config) -> tuple[ClipList, ClipList]:
    """(training, validation) lists; the validation labels are indexed by the training list's classes."""
    c, skip = config.classification, config.data.skip_bad_videos
    train = load_clip_list(c.train_list, c.root or None, format=c.format, classes=c.classes or None,
                           skip_bad_videos=skip)
    return train, load_val_list(config, train.classes)


def load_val_list(config: Config, classes: list[str]) -> ClipList:
    c = config.classification
    return load_clip_list(c.val_list, c.root or None, format=c.format, classes=classes,
                          skip_bad_videos=config.data.skip_bad_videos)


def clip_dataset(config: Config, clips: ClipList, train: bool) -> ClipDataset:
    c, d = config.classification, config.data
    return ClipDataset(clips, train=train, num_frames=d.num_frames, img_size=d.img_size, sampling=c.sampling,
                       frame_interval=c.frame_interval, test_clips=c.test_clips, test_crops=c.test_crops,
                       mean=list(d.mean), std=list(d.std), train_scale=tuple(c.train_scale), seed=config.train.seed,
                       skip_bad_videos=d.skip_bad_videos, cache_mb=d.cache_mb)


# --------------------------------------------------------------------------------------------------- trainer

@dataclass
class ClassificationEpoch:
    epoch: int
    loss: float
    step_time_s: float
    backbone_saved_bytes: int
    alpha: float | None
    beta: float | None
    metrics: dict = field(default_factory=dict)


def mixing_generator(seed: int, step: int) -> torch.Generator:
    """The mixup/cutmix draws of optimizer step ``step``: a function of (seed, step), so a resumed run repeats them."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


class ClassificationTrainer:
    """``ClassificationTrainer(config).fit()``: train, evaluate every ``eval.every`` epochs (and after the last),
    keep ``last.pt`` / ``best.pt``, log to ``metrics.csv``. Constructor arguments as for the TAL trainer."""

    def __init__(self, config: Config, *, resume: "str | Path | TrainingCheckpoint | None" = None,
                 overwrite: bool = False, allow_config_change: bool = False, progress: bool = True):
        if config.task != "classification":
            raise ValueError(f"ClassificationTrainer needs task: classification, got {config.task!r}")
        self.device = resolve_device(config.train.device)
        self.out_dir = Path(config.train.out_dir)
        self.progress = progress
        resume_path = resume.path if isinstance(resume, TrainingCheckpoint) else resume
        in_place = resume_path is not None and Path(resume_path).resolve().parent == self.out_dir.resolve()
        claim_run_dir(self.out_dir, resume=in_place, overwrite=overwrite)
        if not config.classification.train_list:
            raise ValueError("classification.train_list is empty: locate the clips first (the synthetic ones: "
                             "revtal.engine.classification.resolve_clips, as revtal train does)")
        self.config = config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, self.out_dir / "config.yaml")
        seed_everything(config.train.seed)
        if config.train.deterministic:
            enable_deterministic_algorithms()

        self.train_clips, self.val_clips = load_clip_lists(config)
        for name, clips in (("training", self.train_clips), ("validation", self.val_clips)):
            if clips.skipped and progress:
                tqdm.write(f"{name} list: left out {len(clips.skipped)} entries: " + "; ".join(clips.skipped[:5])
                           + (" ..." if len(clips.skipped) > 5 else ""))
        self.classes = self.train_clips.classes
        self.train_set = clip_dataset(config, self.train_clips, train=True)
        self.val_set = clip_dataset(config, self.val_clips, train=False)
        d = config.data
        self.train_loader = build_loader(self.train_set, d.batch_size, shuffle=True, num_workers=d.num_workers,
                                         seed=config.train.seed, collate_fn=collate_clips)

        torch.manual_seed(config.train.seed)  # model init independent of data preparation
        self.model = build_classifier(config, len(self.classes)).to(self.device)
        o = config.optim
        self.optimizer = recipe_optimizer(self.model.trainable_backbone(), self.model.head, o)
        self.iters_per_epoch = max(1, math.ceil(len(self.train_loader) / o.accumulate))
        self.lr_schedule = warmup_cosine(self.optimizer, warmup_steps=int(round(o.warmup_epochs * self.iters_per_epoch)),
                                         total_steps=o.epochs * self.iters_per_epoch, min_ratio=o.min_lr_ratio)
        self.hooks = self.model.mode.hooks(self.model, config.backbone, len(self.train_loader))
        self.ema = ModelEMA(self.model, o.ema_decay) if o.ema else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=o.amp == "fp16" and self.device.type == "cuda")
        if o.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("optim.amp=fp16 needs CUDA; use bf16 on CPU")
        c = config.classification
        self.mixup = MixupCutmix(len(self.classes), c.mixup_alpha, c.cutmix_alpha, c.mixup_prob, c.mixup_switch_prob,
                                 c.label_smoothing)
        self.start_epoch, self.step, self.best_metric = 0, 0, -1.0
        self.history: list[ClassificationEpoch] = []
        self.log = MetricLog(self.out_dir, True)
        if resume:
            self._resume(resume, allow_config_change)
        counts = self.model.parameter_counts()
        if progress:
            tqdm.write(f"{config.backbone.mode} classification: {len(self.classes)} classes, "
                       f"{len(self.train_set)} training / {len(self.val_set)} validation clips, "
                       f"{counts['learnable']:,} learnable of {counts['total']:,} parameters")

    # --------------------------------------------------------------------------------------------- checkpoints
    def state(self, epoch: int) -> dict:
        return training_state(model=self.model, optimizer=self.optimizer, lr_schedule=self.lr_schedule,
                              scaler=self.scaler, ema=self.ema, mode_hooks=self.hooks, epoch=epoch, step=self.step,
                              best_metric=self.best_metric, classes=self.classes, config=self.config)

    def _resume(self, resume, allow_config_change: bool) -> None:
        checkpoint = resume if isinstance(resume, TrainingCheckpoint) else TrainingCheckpoint(resume)
        changes = config_changes(checkpoint.state["config"], self.config.to_dict())
        for line in check_resume_changes(str(checkpoint.path), changes, allow_config_change):
            tqdm.write(line)
        counters = checkpoint.restore_training(model=self.model, optimizer=self.optimizer, lr_schedule=self.lr_schedule,
                                               scaler=self.scaler, ema=self.ema, mode_hooks=self.hooks)
        self.start_epoch, self.step, self.best_metric = counters["epoch"] + 1, counters["step"], counters["best_metric"]

    # --------------------------------------------------------------------------------------------------- train
    def train_epoch(self, epoch: int) -> ClassificationEpoch:
        cfg = self.config
        self.model.train()
        self.train_loader.sampler.set_epoch(epoch)
        accumulate = cfg.optim.accumulate
        losses, times, saved = [], [], 0
        alpha = beta = None
        self.optimizer.zero_grad(set_to_none=True)
        bar = progress_bar(self.train_loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs} [{cfg.backbone.mode}]",
                           disable=not self.progress, leave=False)
        for it, batch in enumerate(bar):
            video, labels = batch["video"].to(self.device), batch["label"].to(self.device)
            if epoch == self.start_epoch and it == 0:
                report = self.hooks.start(self.model.backbone, video)
                if report and self.progress:
                    tqdm.write(report)
            start = time.perf_counter()
            coefficients = self.hooks.before_step(epoch, it // accumulate, self.step)
            if coefficients is not None:
                alpha, beta = coefficients
            video, targets, _ = self.mixup(video, labels, mixing_generator(cfg.train.seed, self.step))
            if it == 0 and self.device.type == "cpu":
                self.model.measure_next_features = True
            with autocast(self.device, cfg.optim.amp):
                logits = self.model(video)
            loss = soft_target_cross_entropy(logits, targets.to(logits.device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch + 1} step {it} (alpha={alpha}, beta={beta})")
            self.scaler.scale(loss / accumulate).backward()
            for event in self.hooks.after_backward():  # float reconstruction checks (and fallbacks) of reversible modes
                self.log.log(self.step, {"safety/relative_error": event.relative_error, "safety/stage": event.stage,
                                         "safety/fallback": event.fallback})
                if self.progress:
                    tqdm.write(event.message())
            if (it + 1) % accumulate == 0 or it + 1 == len(self.train_loader):
                self._optimizer_step()
            if it == 0 and self.model.last_saved_bytes is not None:
                saved = self.model.last_saved_bytes
            times.append(time.perf_counter() - start)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if self.step % cfg.train.log_every == 0:
                self.log.log(self.step, {"train/loss": losses[-1], **{f"lr/{g.get('name', i)}": g["lr"] for i, g in
                                                                      enumerate(self.optimizer.param_groups)}})
        return ClassificationEpoch(epoch, float(np.mean(losses)), float(np.median(times)), int(saved), alpha, beta)

    def _optimizer_step(self) -> None:
        optimizer_step(self.model, self.optimizer, self.scaler, self.lr_schedule, self.ema, self.config.optim.clip_grad)
        self.step += 1

    def fit(self, max_epochs: int | None = None) -> list[ClassificationEpoch]:
        cfg = self.config
        end = cfg.optim.epochs if max_epochs is None else min(cfg.optim.epochs, self.start_epoch + max_epochs)
        for epoch in range(self.start_epoch, end):
            stats = self.train_epoch(epoch)
            if epoch + 1 == cfg.optim.epochs or (epoch + 1) % cfg.eval.every == 0:
                stats.metrics = self.evaluate()
            self.history.append(stats)
            self._end_epoch(stats)
        skipped = sorted(set(self.train_set.skipped) | set(self.val_set.skipped))
        if skipped and self.progress:
            tqdm.write(f"skipped {len(skipped)} unreadable clips: {', '.join(skipped[:5])}" + (" ..." if len(skipped) > 5 else ""))
        self.log.close()
        return self.history

    def _end_epoch(self, stats: ClassificationEpoch) -> None:
        values = {"epoch/loss": stats.loss, "epoch/step_time_s": stats.step_time_s,
                  "epoch/backbone_saved_bytes": stats.backbone_saved_bytes}
        if stats.alpha is not None:
            values.update({"dr2net/alpha": stats.alpha, "dr2net/beta": stats.beta})
        metric = stats.metrics.get("top1") if stats.metrics else None
        if metric is not None:
            values.update({"eval/top1": metric, "eval/top5": stats.metrics["top5"]})
        self.log.log(self.step, values)
        self.best_metric = save_epoch_end(self.out_dir, self.state(stats.epoch), metric, self.best_metric)
        if self.progress:
            tqdm.write(epoch_line(stats, None if metric is None else
                                  f"top-1 {100 * metric:.2f}%, top-5 {100 * stats.metrics['top5']:.2f}%"))

    # ------------------------------------------------------------------------------------------------ evaluate
    def evaluation_model(self) -> ClassificationModel:
        if self.ema is None:
            return self.model
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.ema.shadow)
        return model

    @torch.no_grad()
    def evaluate(self, write: bool = True) -> dict:
        """Accuracy of the evaluation model (EMA weights when kept) over every view of every validation clip;
        writes ``eval.json`` (``write``)."""
        return evaluate_classifier(self.evaluation_model(), self.val_set, self.config, self.device,
                                   self.out_dir if write else None, self.progress)


@torch.no_grad()
def evaluate_classifier(model: ClassificationModel, dataset: ClipDataset, config: Config, device: torch.device,
                        out_dir: Path | None = None, progress: bool = False) -> dict:
    was_training = model.training
    model.eval()
    loader = build_loader(dataset, config.data.batch_size, shuffle=False, num_workers=config.data.num_workers,
                          seed=config.train.seed, collate_fn=collate_clips)
    scores, labels = [], []
    for batch in progress_bar(loader, desc="evaluate", disable=not progress, leave=False):
        video = batch["video"].to(device)  # (B, views, C, T, H, W)
        b, v = video.shape[:2]
        with autocast(device, config.optim.amp):
            logits = model(video.flatten(0, 1))
        scores.append(average_views(logits.float().view(b, v, -1)).cpu())
        labels.append(batch["label"])
    model.train(was_training)
    metrics = classification_metrics(torch.cat(scores), torch.cat(labels), len(dataset.classes))
    metrics["per_class"] = dict(zip(dataset.classes, metrics["per_class"]))
    metrics["views"] = {"clips": dataset.test_clips, "crops": dataset.test_crops}
    metrics["skipped"] = sorted(dataset.skipped)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "eval.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def load_classifier(checkpoint: TrainingCheckpoint, config: Config | None = None) -> ClassificationModel:
    """The trained classifier of a classification checkpoint (EMA weights when the run kept them, at its last α/β),
    built from the checkpoint's backbone weights through its mode, as the TAL predictor rebuilds a TAL model."""
    config = config or checkpoint.config()
    if config.task != "classification":
        raise ValueError(f"{checkpoint.path}: a checkpoint of task {config.task!r}, not classification")
    weights = checkpoint.inference_weights()
    backbone_weights = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    model = build_classifier(config, len(checkpoint.classes), backbone_weights)
    checkpoint.restore_model(model)
    return model.eval()


def evaluate_checkpoint(path: "str | Path | TrainingCheckpoint", config: Config | None = None, out_dir: str | Path | None = None,
                        progress: bool = True) -> dict:
    """``revtal eval`` of a classification checkpoint: its model on the validation list of ``config`` (default: the
    run's own config), all views; writes ``eval.json`` to ``out_dir``."""
    checkpoint = path if isinstance(path, TrainingCheckpoint) else TrainingCheckpoint(path)
    config = config or checkpoint.config()
    model = load_classifier(checkpoint, config)
    device = resolve_device(config.train.device)
    val = load_val_list(config, checkpoint.classes)
    return evaluate_classifier(model.to(device), clip_dataset(config, val, train=False), config, device,
                               Path(out_dir) if out_dir is not None else None, progress)


def chance_top1(dataset: ClipDataset) -> float:
    """Top-1 of always answering the most frequent class (chance level of an imbalanced set)."""
    counts = dataset.clips.counts()
    return max(counts) / max(1, sum(counts))

