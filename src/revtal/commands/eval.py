"""``revtal eval``: evaluate a training checkpoint on the validation subset."""

from __future__ import annotations

from revtal.commands.common import checkpoint_config, config_arguments, located, overwrite_argument
from revtal.engine.classification import evaluate_checkpoint
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
    checkpoint = TrainingCheckpoint(args.checkpoint)
    if checkpoint.state["config"].get("task", "tal") == "classification":
        return _evaluate_classifier(args, checkpoint)
    # the run's own config, changed by what the command line gives (e.g. --set data.val_subset=testing)
    config, annotations = located(args, base=checkpoint)
    out = claim_output_dir(args.out or default_eval_dir(args.checkpoint), results=("predictions.json", "eval.json"),
                           overwrite=args.overwrite, what="an evaluation")
    predictor = Predictor.from_checkpoint(args.checkpoint, config=config,
                                          device=resolve_device(config.train.device), progress=True)
    metrics = predictor.evaluate(evaluation_dataset(config, annotations), annotations, out_dir=out)
    for t, m in zip(metrics["tiou"], metrics["mAP"]):
        print(f"tIoU {t:.2f}: mAP {100 * m:.2f}")
    print(f"average mAP {100 * metrics['average_mAP']:.2f}  (predictions.json, eval.json in {out})")
    return 0


def _evaluate_classifier(args, checkpoint: TrainingCheckpoint) -> int:
    """A classification checkpoint: accuracy over every view of the validation list (e.g. --set
    classification.val_list=other.csv, --set classification.test_clips=5)."""
    config = checkpoint_config(checkpoint, args.config, args.overrides)
    out = claim_output_dir(args.out or default_eval_dir(args.checkpoint), results=("eval.json",),
                           overwrite=args.overwrite, what="an evaluation")
    m = evaluate_checkpoint(checkpoint.path, config, out)
    print(f"top-1 {100 * m['top1']:.2f}%, top-5 {100 * m['top5']:.2f}%, mean class accuracy "
          f"{100 * m['mean_class_accuracy']:.2f}% over {m['num_videos']} videos  (eval.json in {out})")
    return 0
