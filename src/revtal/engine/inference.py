"""Inference without the Trainer: one :class:`Predictor` for ``revtal eval``, ``revtal extract``, ``revtal detect``,
the trainer's own evaluation and the demo's timeline plots.

A predictor is a TAL model in eval mode with its config and class names, built either from a training checkpoint
(:meth:`Predictor.from_checkpoint`: the run's own config, the EMA weights when it kept them, the trained α/β; the
backbone is rebuilt through :func:`revtal.backbones.build` from the checkpoint's backbone weights, so its layout is
inferred as when it was first loaded) or from a config (:meth:`Predictor.from_config`: the configured pretrained
backbone). No process group, optimizer or run directory is created.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from revtal.data.annotations import AnnotationSet, write_predictions
from revtal.data.dataset import SnippetSampling, collate_tal
from revtal.data.decoding import decode_frames, probe_video, sample_timestamps_evenly
from revtal.data.timeline import grid_for_frames
from revtal.data.transforms import build_transforms, to_float_video
from revtal.engine import distributed as dist_utils
from revtal.engine.config import Config
from revtal.engine.datasets import make_loader
from revtal.engine.model import TALModel, build_model, clip_features
from revtal.engine.run_state import TrainingCheckpoint
from revtal.engine.runtime import autocast, model_inputs
from revtal.evaluation.detection import evaluate_detection
from revtal.evaluation.plots import plot_timeline
from revtal.localizers.postprocess import detections_to_seconds
from revtal.utils.io import atomic_write, write_text_atomic
from revtal.utils.progress import progress


class Predictor:
    def __init__(self, model: TALModel, config: Config, classes: list[str], device: torch.device | str = "cpu",
                 progress: bool = False):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.classes = list(classes)
        self.progress = progress
        self.postprocess = config.localizer.postprocess.build()

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: Config | None = None, device: torch.device | str = "cpu",
                        progress: bool = False) -> "Predictor":
        """The trained model of a checkpoint, built from the run's own config. ``config``: the data, evaluation and
        post-processing settings to run it with (default: the run's own too)."""
        checkpoint = TrainingCheckpoint(path)
        trained = checkpoint.config()
        weights = checkpoint.inference_weights()
        backbone = {k[len("extractor."):]: v for k, v in weights.items() if k.startswith("extractor.")}
        model = build_model(trained, len(checkpoint.classes), backbone_weights=backbone or None)
        checkpoint.restore_model(model)
        return cls(model, config or trained, checkpoint.classes, device, progress)

    @classmethod
    def from_config(cls, config: Config, classes: list[str], device: torch.device | str = "cpu",
                    progress: bool = False) -> "Predictor":
        """The model ``config`` trains, as built before training (pretrained backbone, untrained localizer)."""
        torch.manual_seed(config.train.seed)
        return cls(build_model(config, len(classes)), config, classes, device, progress)

    # ------------------------------------------------------------------------------------------------ datasets
    @torch.no_grad()
    def predict(self, dataset, rank: int = 0, world: int = 1) -> dict[str, list[dict]]:
        """ActivityNet results for ``dataset`` (this rank's share, gathered from every rank under DDP)."""
        self.model.eval()
        results: dict[str, list[dict]] = {}
        indices = list(range(rank, len(dataset), world))
        loader = make_loader(torch.utils.data.Subset(dataset, indices), self.config, train=False)
        for batch in progress(loader, desc="evaluate", disable=not self.progress, leave=False):
            video, frame_mask = model_inputs(batch, self.device)
            for det, vid, grid, duration in zip(self._localize(video, frame_mask),
                                                batch["video_id"], batch["grid"], batch["duration"]):
                results[vid] = self._detections(det, grid, duration)
        merged: dict[str, list[dict]] = {}
        for part in dist_utils.gather_objects(results):
            merged.update(part)
        return merged

    def evaluate(self, dataset, annotations: AnnotationSet, out_dir: str | Path | None = None, rank: int = 0,
                 world: int = 1) -> dict:
        """Detection mAP on ``dataset`` (``data.val_subset`` of ``annotations``, ``eval.tiou``); with ``out_dir``,
        writes ``predictions.json`` and ``eval.json`` there."""
        if list(annotations.classes) != self.classes:
            raise ValueError(f"the model was trained on classes {self.classes}, the annotations have "
                             f"{list(annotations.classes)}: evaluate on annotations of the same classes")
        predictions = self.predict(dataset, rank, world)
        metrics = evaluate_detection(annotations, {"results": predictions}, list(self.config.eval.tiou),
                                     subset=self.config.data.val_subset).to_json()
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_predictions(out / "predictions.json", predictions)
            write_text_atomic(out / "eval.json", json.dumps(metrics, indent=2))
        return metrics

    @torch.no_grad()
    def features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) video → (B, C', T') features of the extractor in eval mode (clips (B, n, C, f, H, W) →
        (B, C', n) in snippets mode)."""
        self.model.eval()
        video = video.to(self.device)
        if self.model.clips:
            return clip_features(self.model.mode, self.model.extractor, video)
        return self.model.extractor(video)

    def extract(self, dataset, out_dir: str | Path) -> int:
        """``<video_id>.npy`` (C', T') features of every item of ``dataset``; returns how many were written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate_tal)
        count = 0
        for batch in progress(loader, desc="extract", disable=not self.progress):
            feats = self.features(batch["video"])[0]
            array = feats.float().cpu().numpy()
            atomic_write(out / f"{batch['video_id'][0]}.npy", lambda fh: np.save(fh, array))
            count += 1
        return count

    # --------------------------------------------------------------------------------------------- video files
    @torch.no_grad()
    def detect_file(self, path: str | Path, duration: float | None = None) -> dict:
        """Decode the video as the model's datasets do, localize, and return ActivityNet-style detections: in
        ``frames`` mode ``num_frames`` frames spread over it, in ``snippets`` mode all its clips
        (:class:`~revtal.data.dataset.SnippetSampling` at ``data.fps``, else the file's rate)."""
        d = self.config.data
        info = probe_video(path)
        duration = duration or info.duration
        transform = build_transforms(False, d.img_size, list(d.mean), list(d.std))

        def decode(times) -> torch.Tensor:  # (C, len(times), H, W)
            return transform(to_float_video(decode_frames(path, times, size=d.img_size)[0]), None)

        if self.model.clips:
            sampling = SnippetSampling(d.fps or info.fps, d.clip_frames, d.clip_stride)
            video, grid = sampling.clips(duration, decode), sampling.grid()  # (n, C, f, H, W)
            length = video.shape[0]
        else:
            video, grid = decode(sample_timestamps_evenly(duration, d.num_frames)), grid_for_frames(duration, d.num_frames)
            length = video.shape[1]
        mask = torch.ones(1, length, dtype=torch.bool, device=self.device)
        det = self._localize(video[None].to(self.device), mask)[0]
        return {"video": str(path), "duration": float(duration), "detections": self._detections(det, grid, duration)}

    def _localize(self, video: torch.Tensor, frame_mask: torch.Tensor) -> list[dict]:
        """The model in eval mode under the recipe's autocast on a batch, post-processed: one dict per video."""
        self.model.eval()
        with autocast(self.device, self.config.optim.amp):
            output = self.model(video, frame_mask)
        return self.model.localizer.predict(output, self.postprocess)

    def _detections(self, det: dict, grid, duration: float) -> list[dict]:
        det = detections_to_seconds(det, grid.coarsened(self.model.temporal_stride), duration)
        return [
            {"label": self.classes[int(c)], "score": float(s), "segment": [float(a), float(b)]}
            for (a, b), s, c in zip(det["segments"].tolist(), det["scores"].tolist(), det["labels"].tolist())
        ]

    def plot(self, result: dict, out: str | Path, ground_truth: AnnotationSet | None = None, min_score: float | None = None):
        video_id = Path(result["video"]).stem
        gt = None
        # the file of video ID may be named v_ID (ActivityNet downloads), as the datasets match them
        known = [v for v in (video_id, video_id[2:] if video_id.startswith("v_") else None)
                 if ground_truth is not None and v in ground_truth.videos]
        if known:
            ann = ground_truth.videos[known[0]]
            gt = [{"segment": list(map(float, s)), "label": ground_truth.classes[int(c)]}
                  for s, c in zip(ann.segments, ann.labels)]
        return plot_timeline(out, video_id, result["duration"], result["detections"], self.classes, gt,
                             min_score=min_score)
