"""``revtal train | eval | extract | detect``."""

from __future__ import annotations

import json


def _config_arguments(parser, out_help: str = "output directory (train.out_dir)") -> None:
    parser.add_argument("config", nargs="?", default=None, help="YAML recipe (default: the built-in tiny CPU recipe)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.epochs=3 (repeatable)")
    parser.add_argument("--out", default=None, help=out_help)
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="read a backbone.pretrained file that needs full unpickling (a pickled model): it can "
                             "run code, so only for files from a trusted source (backbone.trust_checkpoint)")


def _overwrite_argument(parser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} already in the output directory")


def _load(args):
    from revtal.engine.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "trust_checkpoint", False):
        overrides.append("backbone.trust_checkpoint=true")
    if getattr(args, "out", None):
        overrides.append(f"train.out_dir={args.out}")
    return load_config(args.config, overrides)


class train:
    @staticmethod
    def add_arguments(parser) -> None:
        _config_arguments(parser)
        parser.add_argument("--resume", default=None,
                            help="continue the run of this checkpoint (e.g. OUT/last.pt) with its own config")
        parser.add_argument("--allow-config-change", action="store_true",
                            help="with --resume: apply the given config/--set values that differ from the run's")
        _overwrite_argument(parser, "a training run")

    @staticmethod
    def run(args) -> int:
        from revtal.engine import distributed
        from revtal.engine.trainer import Trainer

        if args.resume:
            from revtal.engine.checkpoint import TrainingCheckpoint
            from revtal.engine.resume import resumed_config

            resume = TrainingCheckpoint(args.resume)  # read once: for the config here, for the state in the trainer
            # the refusal comes before anything is built; the trainer prints the allowed changes
            config, _ = resumed_config(resume, args.config, args.overrides, args.allow_config_change, args.out)
        else:
            resume, config = None, _load(args)
        trainer = Trainer(config, resume=resume, overwrite=args.overwrite,
                          allow_config_change=args.allow_config_change)
        history = trainer.fit()
        if distributed.is_main() and history and history[-1].metrics:
            print(f"final average mAP: {100 * history[-1].metrics['average_mAP']:.2f}  ({trainer.out_dir})")
        distributed.cleanup()
        return 0


def _located(args, base=None):
    """The CLI's config with its dataset located, and its annotations (no Trainer: nothing is written but the
    synthetic dataset, when none is configured). ``base``: a checkpoint whose config the recipe and overrides
    change (when neither is given, its config is used as it is)."""
    from revtal.engine.config import config_from_dict, read_recipe, recipe_source
    from revtal.engine.data import load_dataset_annotations, resolve_dataset

    if base is None:
        config = _load(args)
    else:
        from revtal.engine.resume import merge

        changes = read_recipe(args.config, args.overrides)
        config = config_from_dict(merge(base.state["config"], changes),
                                  f"{base.path} (its config with {recipe_source(args.config, args.overrides)})")
    config = resolve_dataset(config, config.train.out_dir)
    return config, load_dataset_annotations(config)


class evaluate:
    @staticmethod
    def add_arguments(parser) -> None:
        _config_arguments(parser, "directory for predictions.json and eval.json (default: eval/<checkpoint name> "
                                  "beside the checkpoint)")
        parser.add_argument("--checkpoint", required=True, help="a revtal training checkpoint (last.pt / best.pt)")
        _overwrite_argument(parser, "an earlier evaluation")

    @staticmethod
    def run(args) -> int:
        from revtal.engine.checkpoint import TrainingCheckpoint
        from revtal.engine.data import evaluation_dataset
        from revtal.engine.inference import Predictor, resolve_device
        from revtal.engine.rundir import claim_output_dir, default_eval_dir

        # the run's own config, changed by what the command line gives (e.g. --set data.val_subset=testing)
        config, annotations = _located(args, base=TrainingCheckpoint(args.checkpoint))
        out = claim_output_dir(args.out or default_eval_dir(args.checkpoint), results=("predictions.json", "eval.json"),
                               overwrite=args.overwrite, what="an evaluation")
        predictor = Predictor.from_checkpoint(args.checkpoint, config=config,
                                              device=resolve_device(config.train.device), progress=True)
        metrics = predictor.evaluate(evaluation_dataset(config, annotations), annotations, out_dir=out)
        for t, m in zip(metrics["tiou"], metrics["mAP"]):
            print(f"tIoU {t:.2f}: mAP {100 * m:.2f}")
        print(f"average mAP {100 * metrics['average_mAP']:.2f}  (predictions.json, eval.json in {out})")
        return 0


class extract:
    @staticmethod
    def add_arguments(parser) -> None:
        _config_arguments(parser, "where the recipe's synthetic dataset is generated (train.out_dir)")
        parser.add_argument("--features", required=True, help="directory for <video_id>.npy features (C, T')")
        parser.add_argument("--checkpoint", default=None,
                            help="extract with this training checkpoint's trained backbone (default: the config's "
                                 "pretrained backbone, unconverted)")
        _overwrite_argument(parser, "feature files")

    @staticmethod
    def run(args) -> int:
        from revtal.engine.data import video_dataset
        from revtal.engine.inference import Predictor, resolve_device
        from revtal.engine.rundir import claim_output_dir

        config, annotations = _located(args)
        if config.data.features_dir:
            raise ValueError("revtal extract reads videos: unset data.features_dir (it names features to train on)")
        out = claim_output_dir(args.features, suffix=".npy", overwrite=args.overwrite, what="feature files",
                               how="pass --overwrite to replace them, or choose another --features directory")
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
        count = predictor.extract(video_dataset(config, annotations, subset=None), out)
        print(f"wrote {count} feature files to {out}")
        return 0


class detect:
    """Outputs are named after each video file (folders prefixed where two files share a name); a file that cannot
    be read is reported and skipped, and the command then exits with 1 after the others."""

    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument("videos", nargs="+", help="video files")
        parser.add_argument("--checkpoint", required=True, help="a revtal training checkpoint (last.pt / best.pt)")
        parser.add_argument("--out", required=True, help="output directory for <video>.json and <video>.png")
        parser.add_argument("--gt", default=None, help="ActivityNet-format annotations to overlay (optional)")
        parser.add_argument("--min-score", type=float, default=0.2, help="score threshold of the plot")
        _overwrite_argument(parser, "detections of the same videos")

    @staticmethod
    def run(args) -> int:
        import sys

        from revtal.cli import one_line
        from revtal.engine.inference import Predictor
        from revtal.engine.rundir import claim_output_dir, unique_output_names
        from revtal.errors import USER_ERRORS

        names = unique_output_names(args.videos)
        out = claim_output_dir(args.out, results=[f"{n}{ext}" for n in names for ext in (".json", ".png")],
                               overwrite=args.overwrite, what="detections of these videos")
        detector = Predictor.from_checkpoint(args.checkpoint)
        ground_truth = None
        if args.gt:
            from revtal.data.annotations import load_annotations

            ground_truth = load_annotations(args.gt)
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
            print(f"revtal detect: {len(failed)} of {len(args.videos)} videos failed: {', '.join(failed)}",
                  file=sys.stderr)
            return 1
        return 0
