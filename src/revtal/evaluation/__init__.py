"""Evaluation: the ActivityNet temporal-detection mAP (official semantics) and average recall vs. proposals."""

from revtal.evaluation.detection import (
    ANET_TIOU,
    THUMOS_TIOU,
    DetectionResult,
    ProposalResult,
    average_precision,
    average_recall_vs_proposals,
    evaluate_detection,
    temporal_iou,
)

__all__ = [
    "ANET_TIOU",
    "THUMOS_TIOU",
    "DetectionResult",
    "ProposalResult",
    "average_precision",
    "average_recall_vs_proposals",
    "evaluate_detection",
    "temporal_iou",
]
