"""The `revtal` command line.

Each sub-command ``revtal X`` is the module :mod:`revtal.commands.X`, which defines ``add_arguments(parser)`` and
``run(args) -> int``; this file only maps names to those modules and imports the one that runs, so ``revtal
--help`` stays cheap (torch is imported only by the command that runs).

A user error raised by a command (see :mod:`revtal.errors`) is printed as one line, ``revtal <command>: error:
...``, with exit code 2; ``--debug`` (before or after the command) or ``REVTAL_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from revtal.errors import USER_ERRORS, debug_requested, one_line
from revtal.utils.io import DISK_ERRNOS, disk_error_message
from revtal.utils.provenance import source_commit

# command: what it does; its module is revtal.commands.<command>
COMMANDS: dict[str, str] = {
    "demo": "the main job: synthetic data -> pretrain -> Dr2Net finetune for TAL -> evaluate",
    "train": "train a localizer (and backbone) from a YAML config",
    "eval": "evaluate a checkpoint on the validation subset",
    "extract": "extract backbone features for frozen mode",
    "detect": "detect actions in videos with a trained checkpoint",
    "synth": "write a synthetic untrimmed-video dataset (mp4 + ActivityNet JSON)",
    "evaluate": "score predictions against ground truth (ActivityNet detection mAP)",
    "prepare": "datasets from their official files: THUMOS-14 annotations, re-encoded videos",
    "errmap": "map the gradient error of memory-free backprop over (alpha, beta)",
    "selfcheck": "verify the reversible engine on a tiny model and print what was checked",
    "bench": "memory and speed benchmarks",
    "study": "the papers' tables in miniature on the synthetic dataset",
    "plan": "will this recipe fit my GPU, and in which mode? (simulated on fake tensors, no GPU needed)",
}


# OpenMP threads that finish a parallel region spin for a while waiting for the next one. On a machine whose cores
# are busy with other processes that spinning starves the thread everyone waits for: the demo's conventional
# training at 2 threads took ~30x longer per step than at 1 (docs/THREADS.md). Sleeping waiters
# (PASSIVE) cost nothing measurable there and keep 2 threads as fast as 1 when the cores are busy. OpenMP reads the
# policy once, when torch loads it, so it is set before any command module (and torch) is imported; a value the
# user set wins.
THREAD_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}


def set_thread_environment(environ=os.environ) -> dict[str, str]:
    """Set :data:`THREAD_ENVIRONMENT` where ``environ`` has no value of its own; returns what was set."""
    applied = {key: value for key, value in THREAD_ENVIRONMENT.items() if key not in environ}
    environ.update(applied)
    return applied


def _load(name: str):
    module_name = f"revtal.commands.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise SystemExit(f"revtal {name}: this command is not available in this build ({module_name} missing)")
        raise


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revtal", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors (also REVTAL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of errors (also REVTAL_DEBUG=1)")
        if name == chosen:
            _load(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    set_thread_environment()
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = _load(args.command)
    if args.command in ("bench", "plan"):
        source_commit()  # the source this process imported, recorded in its JSON (read now, not when it is written)
    debug = args.debug or debug_requested()
    try:
        return int(module.run(args) or 0)
    except USER_ERRORS as err:
        if debug:
            traceback.print_exc()
        print(f"revtal {args.command}: error: {one_line(err, debug)}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        if debug:
            traceback.print_exc()
        print(f"revtal {args.command}: error: {disk_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"revtal {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
