"""``revtal synth``: write a synthetic untrimmed-video dataset (mp4 + ActivityNet-format JSON)."""

from __future__ import annotations

from revtal.data.annotations import load_annotations
from revtal.data.synthetic import MAX_CLASSES, generate_clip_dataset, generate_dataset


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output folder (videos/ and annotations.json)")
    parser.add_argument("--videos", type=int, default=64, help="number of videos")
    parser.add_argument("--classes", type=int, default=6, help=f"number of action classes (1..{MAX_CLASSES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--min-duration", type=float, default=20.0, help="shortest video, seconds")
    parser.add_argument("--max-duration", type=float, default=60.0, help="longest video, seconds")
    parser.add_argument("--max-instances", type=int, default=4, help="most action instances per video")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="share of videos in the validation subset")
    parser.add_argument("--clips", type=int, default=0, metavar="N",
                        help="instead: trimmed clips of the same classes, N training clips per class (and N/3 for "
                        "validation; --min/--max-duration give the clip lengths), with train.csv, val.csv and "
                        "classes.txt for task: classification")


def run(args) -> int:
    if args.clips:
        out = generate_clip_dataset(args.out, num_classes=args.classes, train_per_class=args.clips,
                                    val_per_class=max(1, args.clips // 3), seed=args.seed, size=args.size, fps=args.fps,
                                    duration_range=(args.min_duration, args.max_duration))
        print(f"wrote {args.classes * (args.clips + max(1, args.clips // 3))} clips of {args.classes} classes to {out} "
              "(train.csv, val.csv, classes.txt)")
        return 0
    out = generate_dataset(
        args.out,
        num_videos=args.videos,
        num_classes=args.classes,
        seed=args.seed,
        size=args.size,
        fps=args.fps,
        duration_range=(args.min_duration, args.max_duration),
        max_instances=args.max_instances,
        val_fraction=args.val_fraction,
    )
    ann = load_annotations(out / "annotations.json")
    instances = sum(len(v.labels) for v in ann.videos.values())
    hours = sum(v.duration for v in ann.videos.values()) / 3600
    per_subset = {s: len(ann.subset(s)) for s in ann.subsets}
    print(f"wrote {len(ann)} videos ({hours * 60:.1f} min, {instances} action instances, {per_subset}) to {out}")
    print(f"classes: {', '.join(ann.classes)}")
    return 0
