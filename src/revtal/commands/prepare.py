"""``revtal prepare``: datasets from the files their publishers distribute (logic in :mod:`revtal.data.prepare`).

    revtal prepare thumos14 ANNOTATION_DIR --videos DIR --out FILE [--skip-missing]
    revtal prepare videos SRC DST [--fps F] [--short-side S] [--workers N] [--crf Q]
"""

from __future__ import annotations

import argparse
import os
import sys

from revtal.data.prepare import reencode_videos, write_thumos14


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="WHAT", required=True)
    thumos = sub.add_parser("thumos14", help="THUMOS-14's official per-class annotation files -> revtal's JSON",
                            description="THUMOS-14's official per-class annotation files (CLASS_val.txt, "
                                        "CLASS_test.txt, Ambiguous_*.txt) -> revtal's JSON; durations from the videos")
    thumos.add_argument("annotation_dir", help="folder with the official .txt files (searched recursively)")
    thumos.add_argument("--videos", required=True, help="folder with the videos (video_validation_*.mp4, ...)")
    thumos.add_argument("--out", required=True, help="the JSON file to write")
    thumos.add_argument("--skip-missing", action="store_true", help="leave out annotated videos that are missing")
    videos = sub.add_parser("videos", help="re-encode a folder of videos (frame rate, size), resumable",
                            description="re-encode every video of SRC into DST/NAME.mp4 (H.264); finished files "
                                        "are skipped, so an interrupted run resumes; SRC is only read")
    videos.add_argument("src", help="folder of source videos")
    videos.add_argument("dst", help="output folder (not the source folder)")
    videos.add_argument("--fps", type=float, default=None, help="output frame rate (default: the source's)")
    videos.add_argument("--short-side", type=int, default=None, help="output shorter side in pixels (default: keep)")
    videos.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    videos.add_argument("--crf", type=int, default=23, help="H.264 quality (lower: better, larger)")


def run(args: argparse.Namespace) -> int:
    if args.dataset == "thumos14":
        data = write_thumos14(args.annotation_dir, args.videos, args.out, skip_missing=args.skip_missing)
        database = data["database"].values()
        count = sum(len(v["annotations"]) for v in database)
        print(f"wrote {args.out}: {len(data['database'])} videos, {count} instances, {len(data['classes'])} classes")
        return 0
    report = reencode_videos(args.src, args.dst, args.fps, args.short_side, args.workers, args.crf,
                                     progress=sys.stderr.isatty())
    print(f"re-encoded {len(report.done)} videos into {args.dst}; {len(report.skipped)} already there; "
          f"{len(report.failed)} failed")
    for name, reason in sorted(report.failed.items()):
        print(f"  failed: {name}: {reason.splitlines()[0]}", file=sys.stderr)
    return 1 if report.failed else 0
