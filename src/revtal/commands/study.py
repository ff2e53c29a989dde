"""``revtal study``: the papers' comparison tables in miniature, on the synthetic dataset
(:mod:`revtal.experiments.study`)."""

from __future__ import annotations

from revtal.experiments.study.catalogue import ENTRY_BY_NAME, SETTINGS, TABLE_BY_NAME
from revtal.experiments.study.runner import StudyOptions, run_study


def add_arguments(parser) -> None:
    names = ", ".join(ENTRY_BY_NAME)
    parser.add_argument("--out", default="runs/study", help="where results go (default runs/study)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per headline entry (default 3)")
    parser.add_argument("--extra-seeds", type=int, default=None,
                        help="training seeds for the other entries (default: --seeds)")
    parser.add_argument("--entries", default="", help=f"comma-separated entries or tables (default all). "
                        f"Tables: {', '.join(TABLE_BY_NAME)}. Entries: {names}")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per run (default: the demo's 8)")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="clip-classification pretraining steps")
    parser.add_argument("--pretrain-per-seed", action="store_true",
                        help="pretrain one backbone per seed (training seed k uses pretraining seed k); default: "
                        "one backbone (pretraining seed 0) shared by every run")
    parser.add_argument("--pretrained", default="", help="use this backbone checkpoint instead of pretraining one")
    parser.add_argument("--resume-partial", action="store_true",
                        help="skip runs whose OUT/results/<entry>_seed<k>.json already exists")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's last.pt / best.pt")
    parser.add_argument("--quiet-runs", action="store_true", help="no per-epoch progress bars inside runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice; 1 is often faster on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="a tiny seconds-long smoke setting (tests)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained side by side, one process each (default 1); with --jobs, --threads is per "
                        "process (default: the CPUs divided by --jobs). Results do not depend on it; step times do")
    parser.add_argument("--setting", choices=list(SETTINGS), default="miniature",
                        help="the dataset every run trains and is scored on: miniature (the demo's 48 + 16 videos, "
                        "default) or precise (48 training videos too, 96 validation videos)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of every run's base recipe (as `revtal train --set`), after --setting")


def run(args) -> int:
    return run_study(StudyOptions(
        out=args.out, seeds=args.seeds, extra_seeds=args.extra_seeds, entries=args.entries, epochs=args.epochs,
        pretrain_steps=args.pretrain_steps, pretrain_per_seed=args.pretrain_per_seed, pretrained=args.pretrained,
        resume_partial=args.resume_partial, keep_checkpoints=args.keep_checkpoints, quiet_runs=args.quiet_runs,
        threads=args.threads, quick=args.quick, jobs=args.jobs, setting=args.setting, overrides=tuple(args.overrides)))
