"""``revtal plan CONFIG``: will this recipe fit my GPU, and in which mode?

Builds the recipe's whole model on the meta device (no data, no weight files), runs its training steps on fake
tensors as a GPU would run them, and prints per mode the peak of allocated memory, its parts, the phase of the
peak, a modelled CUDA reserved figure and the GPU sizes it fits (:mod:`revtal.bench.plan`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from revtal.bench.plan import DEFAULT_CLASSES, DEFAULT_GPUS, PLAN_MODES, plan, plan_table
from revtal.engine.config import load_config


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML recipe (configs/...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.batch_size=1 (repeatable)")
    parser.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                        help=f"modes to plan, each of which must apply to the recipe (default: every mode that "
                             f"applies, the others listed as not applicable: {' '.join(PLAN_MODES)})")
    parser.add_argument("--gpu-gib", nargs="+", type=float, default=list(DEFAULT_GPUS), metavar="GIB",
                        help="GPU memory sizes to check, GiB (default: 11 24 40 80)")
    parser.add_argument("--steps", type=int, default=2, help="training steps to simulate (default 2: the optimizer "
                        "state exists from the second on)")
    parser.add_argument("--classes", type=int, default=None,
                        help=f"classes of the head (not read from data): default {DEFAULT_CLASSES} for a TAL "
                             "recipe's localizer, a classification recipe's own (its synthetic clips or class file)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="modes simulated at a time, each in its own process (default: the available cores, "
                             "at most 4)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the records as JSON")


def run(args) -> int:
    config = load_config(args.config, args.overrides)
    jobs = args.jobs if args.jobs is not None else min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                      else (os.cpu_count() or 1))
    result = plan(config, args.modes, steps=args.steps, gpus=args.gpu_gib, classes=args.classes, jobs=jobs,
                  progress=True)
    result["command"] = {"config": args.config, "overrides": list(args.overrides), "modes": None if args.modes is None else list(args.modes),
                         "steps": args.steps, "gpu_gib": list(args.gpu_gib), "classes": args.classes}
    print(plan_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(path)
        print(f"wrote {path}")
    return 0
