"""``revtal train | eval | extract | detect``."""

from __future__ import annotations

import json
from pathlib import Path



def _config_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None, help="YAML recipe (default: the built-in tiny CPU recipe)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.epochs=3 (repeatable)")
    parser.add_argument("--out", default=None, help="output directory (train.out_dir)")


def _load(args):
    from revtal.engine.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "out", None):
        overrides.append(f"train.out_dir={args.out}")
    return load_config(args.config, overrides)


class train:
    @staticmethod
    def add_arguments(parser) -> None:
        _config_arguments(parser)
        parser.add_argument("--resume", default=None, help="continue from a checkpoint (e.g. OUT/last.pt)")

    @staticmethod
    def run(args) -> int:
        from revtal.engine import distributed
        from revtal.engine.trainer import Trainer

        trainer = Trainer(_load(args), resume=args.resume)
        history = trainer.fit()
        if distributed.is_main() and history and history[-1].metrics:
            print(f"final average mAP: {100 * history[-1].metrics['average_mAP']:.2f}  ({trainer.out_dir})")
        distributed.cleanup()
        return 0


def _located(args):
    """The CLI's config with its dataset located, and its annotations (no Trainer: nothing is written but the
    synthetic dataset, when none is configured)."""
    from revtal.engine.data import load_dataset_annotations, resolve_dataset

    config = _load(args)
    config = resolve_dataset(config, config.train.out_dir)
    return config, load_dataset_annotations(config)


class evaluate:
    @staticmethod
    def add_arguments(parser) -> None:
        _config_arguments(parser)
        parser.add_argument("--checkpoint", required=True, help="a revtal training checkpoint (last.pt / best.pt)")

    @staticmethod
    def run(args) -> int:
        from revtal.engine.data import evaluation_dataset
        from revtal.engine.inference import Predictor, resolve_device

        config, annotations = _located(args)
        predictor = Predictor.from_checkpoint(args.checkpoint, config=config,
                                              device=resolve_device(config.train.device), progress=True)
        metrics = predictor.evaluate(evaluation_dataset(config, annotations), annotations, out_dir=config.train.out_dir)
        for t, m in zip(metrics["tiou"], metrics["mAP"]):
            print(f"tIoU {t:.2f}: mAP {100 * m:.2f}")
        print(f"average mAP {100 * metrics['average_mAP']:.2f}")
        return 0


class extract:
    @staticmethod
    def add_arguments(parser) -> None:
        _config_arguments(parser)
        parser.add_argument("--features", required=True, help="directory for <video_id>.npy features (C, T')")
        parser.add_argument("--checkpoint", default=None,
                            help="extract with this training checkpoint's trained backbone (default: the config's "
                                 "pretrained backbone, unconverted)")

    @staticmethod
    def run(args) -> int:
        from revtal.engine.data import video_dataset
        from revtal.engine.inference import Predictor, resolve_device

        config, annotations = _located(args)
        if config.data.features_dir:
            raise ValueError("revtal extract reads videos: unset data.features_dir (it names features to train on)")
        device = resolve_device(config.train.device)
        if args.checkpoint:
            predictor = Predictor.from_checkpoint(args.checkpoint, config=config, device=device, progress=True)
        else:  # the pretrained backbone as it is: the features a frozen backbone gives
            if not config.backbone.pretrained:
                print(f"revtal extract: backbone.pretrained is empty: features of a randomly initialised "
                      f"{config.backbone.name} (seed {config.train.seed})")
            frozen = config.with_values({"backbone.mode": "frozen"}, source="revtal extract")
            predictor = Predictor.from_config(frozen, annotations.classes, device=device, progress=True)
        # every video of the annotations, with evaluation transforms (no crop, flip or jitter; none left out)
        count = predictor.extract(video_dataset(config, annotations, subset=None), args.features)
        print(f"wrote {count} feature files to {args.features}")
        return 0


class detect:
    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument("videos", nargs="+", help="video files")
        parser.add_argument("--checkpoint", required=True, help="a revtal training checkpoint (last.pt / best.pt)")
        parser.add_argument("--out", required=True, help="output directory for <video>.json and <video>.png")
        parser.add_argument("--gt", default=None, help="ActivityNet-format annotations to overlay (optional)")
        parser.add_argument("--min-score", type=float, default=0.2, help="score threshold of the plot")

    @staticmethod
    def run(args) -> int:
        from revtal.engine.inference import Predictor

        detector = Predictor.from_checkpoint(args.checkpoint)
        ground_truth = None
        if args.gt:
            from revtal.data.annotations import load_annotations

            ground_truth = load_annotations(args.gt)
        out = Path(args.out)
        for path in args.videos:
            result = detector.detect_file(path)
            video_id = Path(path).stem
            (out / f"{video_id}.json").parent.mkdir(parents=True, exist_ok=True)
            (out / f"{video_id}.json").write_text(json.dumps(result, indent=1))
            detector.plot(result, out / f"{video_id}.png", ground_truth, min_score=args.min_score)
            print(f"{path}: {len(result['detections'])} detections → {out / (video_id + '.json')}")
        return 0
