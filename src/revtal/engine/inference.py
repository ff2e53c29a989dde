"""Running a trained checkpoint on video files: ``revtal detect`` and the demo's timeline plots."""

from __future__ import annotations

from pathlib import Path

import torch

from revtal.data.annotations import AnnotationSet
from revtal.data.decoding import decode_frames, probe_video, sample_timestamps_evenly
from revtal.data.timeline import grid_for_frames
from revtal.data.transforms import build_transforms, to_float_video
from revtal.engine.checkpoint import apply_trained_coefficients, load_checkpoint
from revtal.engine.config import Config, config_from_dict
from revtal.engine.model import TALModel, build_model
from revtal.engine.visualize import plot_timeline
from revtal.localizers.postprocess import detections_to_seconds


class Detector:
    def __init__(self, model: TALModel, config: Config, classes: list[str]):
        self.model = model.eval()
        self.config = config
        self.classes = classes
        d = config.data
        self.transform = build_transforms(False, d.img_size, d.mean, d.std)
        self.postprocess = config.localizer.postprocess.build()

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "Detector":
        state = load_checkpoint(path)
        for key in ("config", "classes", "model"):
            if key not in state:
                raise ValueError(f"{path}: not a revtal training checkpoint (no {key!r} entry)")
        # the trained weights come from the checkpoint itself
        config = config_from_dict(state["config"], source=f"{path} (embedded config)").with_values(
            {"backbone.pretrained": ""})
        model = build_model(config, len(state["classes"]))
        weights = state["ema"]["shadow"] if state.get("ema") else state["model"]
        model.load_state_dict(weights)
        apply_trained_coefficients(model, state)
        return cls(model, config, list(state["classes"]))

    @torch.no_grad()
    def detect_file(self, path: str | Path, duration: float | None = None) -> dict:
        """Decode ``num_frames`` frames spread over the video, localize, and return ActivityNet-style detections."""
        duration = duration or probe_video(path).duration
        num_frames = self.config.data.num_frames
        frames, _ = decode_frames(path, sample_timestamps_evenly(duration, num_frames), size=self.config.data.img_size)
        video = self.transform(to_float_video(frames), None)[None]
        mask = torch.ones(1, video.shape[2], dtype=torch.bool)
        output = self.model(video, mask)
        det = self.model.localizer.predict(output, self.postprocess)[0]
        grid = grid_for_frames(duration, num_frames).coarsened(self.model.temporal_stride)
        det = detections_to_seconds(det, grid, duration)
        detections = [
            {"label": self.classes[int(c)], "score": float(s), "segment": [float(a), float(b)]}
            for (a, b), s, c in zip(det["segments"].tolist(), det["scores"].tolist(), det["labels"].tolist())
        ]
        return {"video": str(path), "duration": float(duration), "detections": detections}

    def plot(self, result: dict, out: str | Path, ground_truth: AnnotationSet | None = None, min_score: float = 0.2):
        video_id = Path(result["video"]).stem
        gt = None
        if ground_truth is not None and video_id in ground_truth.videos:
            ann = ground_truth.videos[video_id]
            gt = [{"segment": list(map(float, s)), "label": ground_truth.classes[int(c)]}
                  for s, c in zip(ann.segments, ann.labels)]
        return plot_timeline(out, video_id, result["duration"], result["detections"], self.classes, gt, min_score)
