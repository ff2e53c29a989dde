"""``revtal extract``: backbone features of every video, for training the localizer on them (``backbone.mode:
frozen`` with ``data.features_dir``)."""

from __future__ import annotations

from revtal.commands.common import config_arguments, located, overwrite_argument
from revtal.engine.datasets import video_dataset
from revtal.engine.inference import Predictor
from revtal.engine.rundir import claim_output_dir
from revtal.engine.runtime import resolve_device


def add_arguments(parser) -> None:
    config_arguments(parser, "where the recipe's synthetic dataset is generated (train.out_dir)")
    parser.add_argument("--features", required=True, help="directory for <video_id>.npy features (C, T')")
    parser.add_argument("--checkpoint", default=None,
                        help="extract with this training checkpoint's trained backbone (default: the config's "
                             "pretrained backbone, unconverted)")
    overwrite_argument(parser, "feature files")


def run(args) -> int:
    config, annotations = located(args)
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
