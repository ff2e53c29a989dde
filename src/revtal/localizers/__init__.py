"""Temporal action localizers (ActionFormer, VSGN; ``registry`` names them), their targets and losses, and inference
post-processing."""

from revtal.localizers.actionformer import ActionFormer, ActionFormerConfig, LocalizerOutput
from revtal.localizers.registry import build_localizer, get_localizer, localizer_names
from revtal.localizers.vsgn import VSGN, VSGNConfig
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
    "VSGN",
    "VSGNConfig",
    "build_localizer",
    "get_localizer",
    "localizer_names",
    "PostprocessConfig",
    "detections_to_seconds",
    "fuse_video_classifier",
    "load_video_classifier_scores",
    "nms",
    "postprocess_detections",
    "segment_voting",
    "soft_nms",
]
