"""``revtal train``: train a localizer (and backbone) from a YAML recipe, or continue a run (``--resume``)."""

from __future__ import annotations

from revtal.commands.common import config_arguments, overwrite_argument, recipe
from revtal.engine import distributed
from revtal.engine.classification import ClassificationTrainer, resolve_clips
from revtal.engine.datasets import resolve_dataset
from revtal.engine.resume import resumed_config
from revtal.engine.run_state import TrainingCheckpoint
from revtal.engine.trainer import Trainer


def add_arguments(parser) -> None:
    config_arguments(parser)
    parser.add_argument("--resume", default=None,
                        help="continue the run of this checkpoint (e.g. OUT/last.pt) with its own config")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: apply the given config/--set values that differ from the run's")
    overwrite_argument(parser, "a training run")


def run(args) -> int:
    if args.resume:
        resume = TrainingCheckpoint(args.resume)  # read once: for the config here, for the state in the trainer
        # the refusal comes before anything is built; the trainer prints the allowed changes
        config, _ = resumed_config(resume, args.config, args.overrides, args.allow_config_change, args.out)
    else:
        resume, config = None, recipe(args)
    if config.task == "classification":
        return _train_classifier(config, resume, args)
    # no dataset configured: the synthetic one, written under the run's directory on first use
    config = resolve_dataset(config, config.train.out_dir)
    trainer = Trainer(config, resume=resume, overwrite=args.overwrite, allow_config_change=args.allow_config_change)
    history = trainer.fit()
    if distributed.is_main() and history and history[-1].metrics:
        print(f"final average mAP: {100 * history[-1].metrics['average_mAP']:.2f}  ({trainer.out_dir})")
    distributed.cleanup()
    return 0


def _train_classifier(config, resume, args) -> int:
    """``task: classification``: the synthetic trimmed clips when no list is configured, then the trainer."""
    config = resolve_clips(config, config.train.out_dir)
    trainer = ClassificationTrainer(config, resume=resume, overwrite=args.overwrite,
                                    allow_config_change=args.allow_config_change)
    history = trainer.fit()
    if history and history[-1].metrics:
        m = history[-1].metrics
        print(f"final top-1 {100 * m['top1']:.2f}%, top-5 {100 * m['top5']:.2f}%, mean class accuracy "
              f"{100 * m['mean_class_accuracy']:.2f}% over {m['num_videos']} videos  ({trainer.out_dir})")
    return 0
