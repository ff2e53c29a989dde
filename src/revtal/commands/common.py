"""Arguments and config loading shared by the recipe-driven commands (``revtal train | eval | extract``)."""

from __future__ import annotations

from revtal.data.annotations import AnnotationSet
from revtal.engine.config import Config, load_config
from revtal.engine.datasets import load_dataset_annotations, resolve_dataset
from revtal.engine.resume import checkpoint_config
from revtal.engine.run_state import TrainingCheckpoint


def config_arguments(parser, out_help: str = "output directory (train.out_dir)") -> None:
    parser.add_argument("config", nargs="?", default=None, help="YAML recipe (default: the built-in tiny CPU recipe)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.epochs=3 (repeatable)")
    parser.add_argument("--out", default=None, help=out_help)


def overwrite_argument(parser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} already in the output directory")


def recipe(args) -> Config:
    """The command line's config: its recipe file with ``--set`` overrides (and ``--out`` as train.out_dir)."""
    overrides = list(args.overrides)
    if getattr(args, "out", None):
        overrides.append(f"train.out_dir={args.out}")
    return load_config(args.config, overrides)


def located(args, base: TrainingCheckpoint | None = None) -> tuple[Config, AnnotationSet]:
    """The command line's config with its dataset located, and its annotations (no Trainer: nothing is written but
    the synthetic dataset, when none is configured). ``base``: a checkpoint whose config the recipe and overrides
    change (when neither is given, its config is used as it is)."""
    config = recipe(args) if base is None else checkpoint_config(base, args.config, args.overrides)
    config = resolve_dataset(config, config.train.out_dir)
    return config, load_dataset_annotations(config)
