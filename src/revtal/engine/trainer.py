"""One trainer for every backbone mode: same data, localizer, optimiser, evaluation and checkpoints.

``Trainer(config).fit()`` trains, evaluates every ``eval.every`` epochs, keeps ``last.pt`` and ``best.pt``
(atomic writes; ``resume=`` continues bit-for-bit on CPU), and logs losses, learning rates, α/β, step time and
backbone memory to a CSV, TensorBoard event files and progress bars. Under ``torchrun`` it trains with DDP (gloo on
CPU, nccl on CUDA): rank 0 logs and writes checkpoints, every rank applies the same α/β (a pure function of the
step), and evaluation predictions are gathered from all ranks.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from revtal.data.annotations import AnnotationSet
from revtal.engine import distributed as dist_utils
from revtal.engine.run_state import TrainingCheckpoint, epoch_line, save_epoch_end, training_state
from revtal.engine.config import Config, dump_config
from revtal.engine.datasets import TrainingData, check_located
from revtal.engine.model import TALModel, build_model
from revtal.engine.inference import Predictor
from revtal.engine.runtime import autocast, model_inputs, resolve_device
from revtal.engine.optim import ModelEMA, optimizer_step, recipe_optimizer, warmup_cosine
from revtal.engine.resume import check_resume_changes, config_changes
from revtal.engine.rundir import claim_run_dir
from revtal.utils.progress import progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    step_time_s: float
    backbone_memory_bytes: int
    memory_kind: str
    alpha: float | None
    beta: float | None
    metrics: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # training videos skipped as unreadable in this epoch (this rank)


class MetricLog:
    """CSV + TensorBoard on rank 0; no-ops elsewhere."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.csv"
        self.writer = None
        if enabled:
            try:  # tensorboard is an optional extra (and heavy): imported only by a run that logs
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is an optional extra
                self.writer = None

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "key", "value"])
            for key, value in values.items():
                writer.writerow([step, key, value])
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def enable_deterministic_algorithms() -> None:
    """``train.deterministic``: kernels that repeat bit for bit where torch offers a choice (CUDA, cuDNN, oneDNN).
    CPU runs at a fixed thread count are repeatable without it; this covers CUDA, and oneDNN's bf16 convolutions."""
    # cuBLAS reads this when its first handle is created: a fixed workspace makes its reductions repeatable
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.mkldnn.deterministic = True


class Trainer:
    def __init__(self, config: Config, *, resume: "str | Path | TrainingCheckpoint | None" = None, overwrite: bool = False,
                 allow_config_change: bool = False, progress: bool = True):
        """``config.train.out_dir`` must not hold a run already unless ``resume`` continues it or ``overwrite``
        replaces it (:mod:`revtal.engine.rundir`); a resumed run's config must equal the checkpoint's (but for
        ``train.out_dir``) unless ``allow_config_change``, and then the changes are printed. The config names its
        data: the synthetic dataset is written beforehand (:func:`revtal.engine.datasets.resolve_dataset`)."""
        check_located(config)
        self.device = resolve_device(config.train.device)
        self.rank, self.world = dist_utils.init_from_env(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.out_dir = Path(config.train.out_dir)
        self.main = dist_utils.is_main()
        self.progress = progress and self.main
        # every rank refuses an existing run before rank 0 changes anything (no rank is left waiting at a barrier)
        # resuming into another directory than the checkpoint's starts a new run directory there
        resume_path = resume.path if isinstance(resume, TrainingCheckpoint) else resume
        in_place = resume_path is not None and Path(resume_path).resolve().parent == self.out_dir.resolve()
        claim_run_dir(self.out_dir, resume=in_place, overwrite=overwrite, check_only=not self.main)
        dist_utils.barrier()
        self.config = config
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            dump_config(config, self.out_dir / "config.yaml")  # the whole job: re-running it repeats the run
        seed_everything(config.train.seed)
        if config.train.deterministic:
            enable_deterministic_algorithms()

        data = TrainingData.from_config(config, self.rank, self.world)
        self.annotations: AnnotationSet = data.annotations
        self.classes = self.annotations.classes
        self.train_set, self.val_set, self.train_loader = data.train_set, data.val_set, data.train_loader

        torch.manual_seed(config.train.seed)  # model init independent of data preparation
        self.model: TALModel = build_model(config, len(self.classes)).to(self.device)
        self.net: nn.Module = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        ocfg = config.optim
        self.optimizer = recipe_optimizer(self.model.trainable_backbone(), self.model.localizer, ocfg)
        self.iters_per_epoch = max(1, math.ceil(len(self.train_loader) / ocfg.accumulate))  # optimizer steps
        self.lr_schedule = warmup_cosine(
            self.optimizer,
            warmup_steps=int(round(ocfg.warmup_epochs * self.iters_per_epoch)),
            total_steps=ocfg.epochs * self.iters_per_epoch,
            min_ratio=ocfg.min_lr_ratio,
        )
        self.hooks = self.model.mode.hooks(self.model, config.backbone, len(self.train_loader))
        self.ema = ModelEMA(self.model, ocfg.ema_decay) if ocfg.ema else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=ocfg.amp == "fp16" and self.device.type == "cuda")
        if ocfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("optim.amp=fp16 needs CUDA; use bf16 on CPU")
        self.start_epoch = 0
        self.step = 0
        self.best_metric = -1.0
        self.history: list[EpochStats] = []
        self.log = MetricLog(self.out_dir, self.main)
        self.skipped: set[str] = set()  # training videos skipped as unreadable, over the run
        if resume:
            self._resume(resume, allow_config_change)
        counts = self.model.parameter_counts()
        self.log.log(self.step, {"model/learnable_parameters": counts["learnable"], "model/total_parameters": counts["total"]})
        if self.progress:
            tqdm.write(f"{config.backbone.mode}: {counts['learnable']:,} learnable of {counts['total']:,} parameters")

    @property
    def coefficients(self):
        """The mode's coefficient schedule (Dr²Net), or None."""
        return self.hooks.schedule

    @property
    def monitor(self):
        """The mode's float-reconstruction monitor, or None."""
        return self.hooks.monitor

    # --------------------------------------------------------------------------------------------- checkpoints
    def state(self, epoch: int) -> dict:
        return training_state(model=self.model, optimizer=self.optimizer, lr_schedule=self.lr_schedule,
                              scaler=self.scaler, ema=self.ema, mode_hooks=self.hooks, epoch=epoch, step=self.step,
                              best_metric=self.best_metric, classes=self.classes, config=self.config)

    def _resume(self, resume: "str | Path | TrainingCheckpoint", allow_config_change: bool) -> None:
        # a checkpoint already read (revtal train --resume reads it once for its config) is not loaded again
        checkpoint = resume if isinstance(resume, TrainingCheckpoint) else TrainingCheckpoint(resume)
        changes = config_changes(checkpoint.state["config"], self.config.to_dict())
        for line in check_resume_changes(str(checkpoint.path), changes, allow_config_change):
            if self.main:
                tqdm.write(line)
        counters = checkpoint.restore_training(
            model=self.model, optimizer=self.optimizer, lr_schedule=self.lr_schedule, scaler=self.scaler,
            ema=self.ema, mode_hooks=self.hooks)
        self.start_epoch = counters["epoch"] + 1
        self.step = counters["step"]
        self.best_metric = counters["best_metric"]

    # --------------------------------------------------------------------------------------------------- train
    def autocast(self):
        return autocast(self.device, self.config.optim.amp)

    def _targets(self, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Segments from seconds to feature-grid units, through each video's grid (the one mapping)."""
        stride = self.model.temporal_stride
        segments = []
        for seconds, grid in zip(batch["segments"], batch["grid"]):
            positions = grid.coarsened(stride).to_position(np.asarray(seconds, dtype=np.float64).reshape(-1, 2))
            segments.append(torch.as_tensor(positions, dtype=torch.float32, device=self.device))
        labels = [torch.as_tensor(lab, dtype=torch.long, device=self.device) for lab in batch["labels"]]
        return segments, labels

    def train_epoch(self, epoch: int) -> EpochStats:
        cfg = self.config
        self.net.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        losses, times = [], []
        memory, memory_kind = 0, "saved_bytes"
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            memory_kind = "cuda_max_allocated"
        bar = progress(self.train_loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs} [{cfg.backbone.mode}]",
                       disable=not self.progress, leave=False)
        accumulate = cfg.optim.accumulate
        self.optimizer.zero_grad(set_to_none=True)
        alpha = beta = None
        skipped: set[str] = set()
        for it, batch in enumerate(bar):
            skipped.update(batch.get("skipped", ()))
            video, frame_mask = model_inputs(batch, self.device)
            if epoch == self.start_epoch and it == 0:
                self._start_hooks(video)
            start = time.perf_counter()
            # the schedule counts optimizer steps (iters_per_epoch): with accumulation, every micro-batch of one
            # step runs at the same (α, β)
            coefficients = self.hooks.before_step(epoch, it // accumulate, self.step)
            if coefficients is not None:
                alpha, beta = coefficients
            segments, labels = self._targets(batch)
            if it == 0 and self.device.type == "cpu":
                self.model.measure_next_features = True
            with self.autocast():
                output = self.net(video, frame_mask)
                loss_dict = self.model.localizer.loss(output, segments, labels)
            loss = loss_dict["total"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1} step {it} (alpha={alpha}, beta={beta}): {loss_dict}"
                )
            self.scaler.scale(loss / accumulate).backward()
            for event in self.hooks.after_backward():
                self._log_reconstruction(event)
            if (it + 1) % accumulate == 0 or it + 1 == len(self.train_loader):
                self._optimizer_step()
            if it == 0 and self.model.last_saved_bytes is not None:
                memory = self.model.last_saved_bytes
            times.append(time.perf_counter() - start)
            losses.append(loss.detach().item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", **({"a": f"{alpha:.2f}", "b": f"{beta:.3f}"} if alpha is not None else {}))
            if self.step % cfg.train.log_every == 0:
                self._log_step(loss_dict, alpha, beta)
        if self.device.type == "cuda":
            memory = torch.cuda.max_memory_allocated(self.device)
        return EpochStats(epoch, float(np.mean(losses)), float(np.median(times)), int(memory), memory_kind, alpha, beta,
                          skipped=sorted(skipped))

    def _optimizer_step(self) -> None:
        optimizer_step(self.model, self.optimizer, self.scaler, self.lr_schedule, self.ema, self.config.optim.clip_grad)
        self.step += 1

    def _log_step(self, loss_dict: dict, alpha: float | None, beta: float | None) -> None:
        values = {f"train/{k}": v.detach().item() for k, v in loss_dict.items() if k in ("total", "cls", "reg")}
        values.update({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)})
        if alpha is not None:
            values.update({"dr2net/alpha": alpha, "dr2net/beta": beta})
        self.log.log(self.step, values)

    def _log_reconstruction(self, event) -> None:
        self.log.log(self.step, {"safety/relative_error": event.relative_error, "safety/stage": event.stage,
                                 "safety/fallback": event.fallback})
        if self.main:
            tqdm.write(event.message())

    def _start_hooks(self, video: torch.Tensor) -> None:
        """The mode's once-per-run preparation on the first batch (the end point of an ``end: auto`` schedule)."""
        report = self.hooks.start(self.model.extractor, self.model.backbone_input(video))
        if report and self.progress:
            tqdm.write(report)

    def fit(self, max_epochs: int | None = None) -> list[EpochStats]:
        """Train from ``start_epoch`` to the configured end (or for at most ``max_epochs`` epochs of it: an
        interrupted run, continued later with ``resume=``)."""
        cfg = self.config
        end = cfg.optim.epochs if max_epochs is None else min(cfg.optim.epochs, self.start_epoch + max_epochs)
        for epoch in range(self.start_epoch, end):
            stats = self.train_epoch(epoch)
            self._report_skipped(epoch, stats.skipped)
            last = epoch + 1 == cfg.optim.epochs
            if last or (epoch + 1) % cfg.eval.every == 0:
                stats.metrics = self.evaluate()
            self.history.append(stats)
            self._end_epoch(stats)
        self._report_usage()
        self.log.close()
        return self.history

    def _report_skipped(self, epoch: int, skipped: list[str]) -> None:
        """One line after an epoch that skipped unreadable training videos (every rank's, so after a barrier)."""
        skipped = sorted({vid for part in dist_utils.gather_objects(skipped) for vid in part})
        self.skipped.update(skipped)
        if skipped and self.main:
            tqdm.write(f"epoch {epoch + 1}: training {self.train_set.usage_summary(skipped)}")

    def _report_usage(self) -> None:
        """The run's summary of the videos it could not use (unreadable, missing, without annotations)."""
        if not self.main:
            return
        for name, dataset, extra in (("training", self.train_set, self.skipped), ("evaluation", self.val_set, ())):
            summary = dataset.usage_summary(extra) if hasattr(dataset, "usage_summary") else None
            if summary:
                tqdm.write(f"{name} videos: {summary}")

    def _end_epoch(self, stats: EpochStats) -> None:
        values = {"epoch/loss": stats.loss, "epoch/step_time_s": stats.step_time_s,
                  f"epoch/backbone_{stats.memory_kind}": stats.backbone_memory_bytes}
        if stats.alpha is not None:
            values.update({"dr2net/alpha": stats.alpha, "dr2net/beta": stats.beta})
        if stats.metrics:
            values["eval/average_mAP"] = stats.metrics["average_mAP"]
        self.log.log(self.step, values)
        if self.main:
            metric = stats.metrics.get("average_mAP") if stats.metrics else None
            self.best_metric = save_epoch_end(self.out_dir, self.state(stats.epoch), metric, self.best_metric)
            if self.progress:
                tqdm.write(epoch_line(stats, None if metric is None else f"average mAP {100 * metric:.2f}"))
        dist_utils.barrier()

    # ------------------------------------------------------------------------------------------------ evaluate
    def evaluation_model(self) -> TALModel:
        if self.ema is None:
            return self.model
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.ema.shadow)
        return model

    def evaluate(self, write: bool = True) -> dict:
        """Detection mAP of the evaluation model (EMA weights when kept) on the validation subset, gathered from
        every rank; rank 0 writes predictions.json and eval.json (``write``)."""
        predictor = Predictor(self.evaluation_model(), self.config, self.classes, self.device, self.progress)
        out_dir = self.out_dir if write and self.main else None
        return predictor.evaluate(self.val_set, self.annotations, out_dir, rank=self.rank, world=self.world)
