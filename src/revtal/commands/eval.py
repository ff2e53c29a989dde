"""``revtal eval``: evaluate a training checkpoint on the validation subset."""

from __future__ import annotations

from revtal.commands.common import config_arguments, located, overwrite_argument
from revtal.engine.datasets import evaluation_dataset
from revtal.engine.inference import Predictor
from revtal.engine.rundir import claim_output_dir, default_eval_dir
from revtal.engine.run_state import TrainingCheckpoint
from revtal.engine.runtime import resolve_device


def add_arguments(parser) -> None:
    config_arguments(parser, "directory for predictions.json and eval.json (default: eval/<checkpoint name> "
                             "beside the checkpoint)")
    parser.add_argument("--checkpoint", required=True, help="a revtal training checkpoint (last.pt / best.pt)")
    overwrite_argument(parser, "an earlier evaluation")


def run(args) -> int:
    # the run's own config, changed by what the command line gives (e.g. --set data.val_subset=testing)
    config, annotations = located(args, base=TrainingCheckpoint(args.checkpoint))
    out = claim_output_dir(args.out or default_eval_dir(args.checkpoint), results=("predictions.json", "eval.json"),
                           overwrite=args.overwrite, what="an evaluation")
    predictor = Predictor.from_checkpoint(args.checkpoint, config=config,
                                          device=resolve_device(config.train.device), progress=True)
    metrics = predictor.evaluate(evaluation_dataset(config, annotations), annotations, out_dir=out)
    for t, m in zip(metrics["tiou"], metrics["mAP"]):
        print(f"tIoU {t:.2f}: mAP {100 * m:.2f}")
    print(f"average mAP {100 * metrics['average_mAP']:.2f}  (predictions.json, eval.json in {out})")
    return 0
