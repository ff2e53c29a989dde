"""`revtal evaluate`: score a detection results file against ground truth with the ActivityNet mAP protocol.

    revtal evaluate --gt GT.json --pred PRED.json [--dataset anet|thumos | --tiou 0.3,0.5,0.7]
                    [--subset validation] [--json OUT.json]

Prints mAP per tIoU threshold and their average; ``--json`` writes ``{"tiou": [...], "mAP": [...], "average_mAP": x}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from revtal.evaluation.detection import evaluate_detection


def _parse_tiou(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tiou expects comma-separated numbers such as 0.3,0.5,0.7, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"--tiou thresholds must be in (0, 1], got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, help="ground truth, ActivityNet JSON layout")
    parser.add_argument("--pred", required=True, help="detections, ActivityNet results layout")
    thresholds = parser.add_mutually_exclusive_group()
    thresholds.add_argument("--dataset", choices=["anet", "thumos"], help="threshold set: anet 0.5:0.05:0.95 (default), thumos 0.3:0.1:0.7")
    thresholds.add_argument("--tiou", type=_parse_tiou, help="custom thresholds, comma-separated")
    parser.add_argument("--subset", help="evaluate only the ground-truth videos of this subset (e.g. validation)")
    parser.add_argument("--json", dest="json_out", help="write the result as JSON here")
    parser.add_argument("--per-class", action="store_true", help="also print each class's AP averaged over thresholds")


def run(args: argparse.Namespace) -> int:
    thresholds = args.tiou if args.tiou is not None else (args.dataset or "anet")
    # bad files or fields raise user errors, which revtal.cli prints as one line with exit code 2
    result = evaluate_detection(args.gt, args.pred, thresholds, subset=args.subset)
    for warning in result.warnings:
        print(f"revtal evaluate: warning: {warning}", file=sys.stderr)
    print(f"ground truth: {args.gt}" + (f" (subset {args.subset})" if args.subset else ""))
    print(f"predictions:  {args.pred}")
    print(f"classes evaluated: {len(result.classes)}")
    print(result.format_table())
    if args.per_class:
        width = max(len(name) for name in result.classes)
        for name, ap in zip(result.classes, result.per_class_ap.mean(axis=0)):
            print(f"  {name:<{width}}  {100 * ap:6.2f}")
    if args.json_out:
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"wrote {path}")
    return 0
