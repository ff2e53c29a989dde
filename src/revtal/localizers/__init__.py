"""Temporal action localizers: ActionFormer, its training targets and losses, and inference post-processing."""

from revtal.localizers.actionformer import ActionFormer, ActionFormerConfig, LocalizerOutput
from revtal.localizers.postprocess import (
    PostprocessConfig,
    detections_to_seconds,
    fuse_video_classifier,
    load_video_classifier_scores,
    nms,
    postprocess_detections,
    segment_voting,
    soft_nms,
)

__all__ = [
    "ActionFormer",
    "ActionFormerConfig",
    "LocalizerOutput",
    "PostprocessConfig",
    "detections_to_seconds",
    "fuse_video_classifier",
    "load_video_classifier_scores",
    "nms",
    "postprocess_detections",
    "segment_voting",
    "soft_nms",
]
