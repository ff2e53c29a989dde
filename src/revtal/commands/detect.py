"""``revtal detect``: detect actions in video files with a trained checkpoint.

Outputs are named after each video file (folders prefixed where two files share a name); a file that cannot be read
is reported and skipped, and the command then exits with 1 after the others."""

from __future__ import annotations

import json
import sys

from revtal.data.annotations import load_annotations
from revtal.commands.common import overwrite_argument
from revtal.engine.inference import Predictor
from revtal.engine.rundir import claim_output_dir, unique_output_names
from revtal.errors import USER_ERRORS, one_line


def add_arguments(parser) -> None:
    parser.add_argument("videos", nargs="+", help="video files")
    parser.add_argument("--checkpoint", required=True, help="a revtal training checkpoint (last.pt / best.pt)")
    parser.add_argument("--out", required=True, help="output directory for <video>.json and <video>.png")
    parser.add_argument("--gt", default=None, help="ActivityNet-format annotations to overlay (optional)")
    parser.add_argument("--min-score", type=float, default=0.2, help="score threshold of the plot")
    overwrite_argument(parser, "detections of the same videos")


def run(args) -> int:
    names = unique_output_names(args.videos)
    out = claim_output_dir(args.out, results=[f"{n}{ext}" for n in names for ext in (".json", ".png")],
                           overwrite=args.overwrite, what="detections of these videos")
    detector = Predictor.from_checkpoint(args.checkpoint)
    ground_truth = load_annotations(args.gt) if args.gt else None
    failed = []
    for path, name in zip(args.videos, names):
        try:
            result = detector.detect_file(path)
        except USER_ERRORS as err:  # an unreadable file: say so, go on with the others
            print(f"revtal detect: error: {path}: {one_line(err)}", file=sys.stderr)
            failed.append(path)
            continue
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
        detector.plot(result, out / f"{name}.png", ground_truth, min_score=args.min_score)
        print(f"{path}: {len(result['detections'])} detections → {out / (name + '.json')}")
    if failed:
        print(f"revtal detect: {len(failed)} of {len(args.videos)} videos failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
