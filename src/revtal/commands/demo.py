"""``revtal demo``: the main job, end to end on a dataset it generates itself (:mod:`revtal.experiments.demo`)."""

from __future__ import annotations

from revtal.experiments.demo import MODES, run_demo


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="where results go (default runs/demo)")
    parser.add_argument("--pretrain-steps", type=int, default=600, help="clip-classification pretraining steps")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated training modes (default {','.join(MODES)})")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")


def run(args) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    return run_demo(args.out, pretrain_steps=args.pretrain_steps, modes=modes, quick=args.quick)
