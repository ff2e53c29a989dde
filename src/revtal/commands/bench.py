"""``revtal bench memory|speed``: memory and step time of each training mode, one fresh process per configuration.

``memory`` takes one warm-up and one measured step per configuration (bytes saved for backward, process peak, CUDA
peak on a GPU; the step time of that single step is recorded too). ``speed`` takes more warm-up steps and times
``--repeats`` steps, reporting the median (memory is measured on the first timed step as well). Both print a
Markdown table; ``--json OUT`` writes ``{"machine": ..., "records": [...], "skipped": [...]}`` and ``--plot DIR``
the memory-vs-depth and memory-vs-frames figures. ``report --inputs A.json B.json ...`` merges earlier runs (e.g. a
depth sweep and a clip-length sweep) into one table, JSON and set of plots.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from revtal.backbones import list_backbones
from revtal.bench.configs import (DR2NET_EXACT_COEFFICIENTS, DR2NET_FLOAT_COEFFICIENTS, INITS, MODE_DESCRIPTIONS,
                                  MODES, Grid, canonical_label, record_label)
from revtal.bench.report import markdown_table, write_plots
from revtal.bench.runner import machine_info, merge_json, run_configs, write_json
from revtal.experiments import reference_localizer
from revtal.experiments.reference_localizer import FEATURE_SETS, IMPLEMENTATIONS

KINDS = {
    # kind: (warmup, repeats, allocator) defaults; speed runs time the allocator a user's process has
    "memory": (1, 1, "mmap"),
    "speed": (2, 10, "default"),
}
# small enough for a test: a 2-block tiny ViT on 8×96² clips, one intra-op thread (see --threads)
QUICK = {
    "models": ["vit_tiny_video"], "modes": ["conventional", "checkpoint", "re2"], "depths": [2], "frames": [8],
    "img_sizes": [96], "batches": [2], "clips": [1], "repeats": 2, "threads": 1,
}
DEFAULTS = {
    "models": ["vit_s_video"], "modes": [m for m in MODES], "depths": [12], "frames": [16], "img_sizes": [112],
    "batches": [1], "clips": [1],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kind", choices=[*KINDS, "report", "localizer"],
        help="memory: one measured step; speed: median of --repeats; report: merge --inputs of earlier runs; "
        "localizer: revtal's localizer against the reference ActionFormer on synthetic features",
    )
    parser.add_argument("--inputs", nargs="+", metavar="JSON", help="report: JSON files written by --json")
    parser.add_argument("--models", nargs="+", help=f"backbone names (default {DEFAULTS['models']})")
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, type=canonical_label, metavar="MODE",
        help="training modes, MODE or MODE:BACKPROP (default all; dr2net alone is dr2net:exact, and the earlier names "
        "dr2net_float, dr2net_exact are read as dr2net:reversible, dr2net:exact): "
        + "; ".join(f"{k}: {v}" for k, v in MODE_DESCRIPTIONS.items()),
    )
    parser.add_argument("--depths", nargs="+", type=int, help="ViT depths (default 12; other models keep their own)")
    parser.add_argument("--frames", nargs="+", type=int, help="frames per clip (default 16)")
    parser.add_argument("--img-sizes", nargs="+", type=int, help="square frame sizes in pixels (default 112)")
    parser.add_argument("--batches", nargs="+", type=int, help="samples (videos) per batch (default 1)")
    parser.add_argument(
        "--clips", nargs="+", type=int,
        help="clips of --frames frames per sample (default 1): a video of clips × frames frames, run through the "
        "backbone clip by clip and laid end to end for the head, as in end-to-end TAL",
    )
    parser.add_argument(
        "--clip-batch", type=int, default=1,
        help="clips per backbone call when --clips > 1 (default 1; LoSA cuts its clips itself)",
    )
    parser.add_argument("--warmup", type=int, help="untimed steps before measuring (default: memory 1, speed 2)")
    parser.add_argument("--repeats", type=int, help="timed steps (default: memory 1, speed 10)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads in each worker (default: torch's choice). On a CPU shared with other work, 1 "
        "avoids OpenMP threads spinning on each other, which can slow a step by an order of magnitude",
    )
    parser.add_argument(
        "--window-chunk", type=int, default=None, metavar="N",
        help="Video Swin backbones: window attention N windows at a time and the MLP by as many windows' tokens "
        "(backbone.window_chunk; default: the library's attention and MLP)",
    )
    parser.add_argument(
        "--init", choices=INITS, default="library",
        help="library: each library's random init; finetune: BatchNorm scales a library starts at zero (pytorchvideo's "
        "bottlenecks) start at one, as in the pretrained weights a finetune begins from (a Re² block with a zero "
        "scale is dead, which slows AdamW's step on a CPU)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="measure every configuration this many times, in alternating order, pooling the step times (on a "
        "shared machine: spreads load drifts over all modes)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per configuration")
    parser.add_argument(
        "--dr2net-float", nargs=2, type=float, default=list(DR2NET_FLOAT_COEFFICIENTS), metavar=("ALPHA", "BETA"),
        help="(α, β) of dr2net:reversible (default 0.5 0.5: float reversible backprop is useless at Dr²Net's start "
        "(1, 0.1))",
    )
    parser.add_argument(
        "--dr2net-exact", nargs=2, type=float, default=list(DR2NET_EXACT_COEFFICIENTS), metavar=("ALPHA", "BETA"),
        help="(α, β) of dr2net:exact (default 1 0.1; β is rounded to a dyadic, 13/128)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny preset (seconds); explicit options override it")
    parser.add_argument("--json", metavar="OUT", help="write machine info and records as JSON")
    parser.add_argument(
        "--plot", metavar="DIR", help="write memory_vs_depth.png, memory_vs_frames.png and memory_vs_clips.png"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_localizer_arguments(parser)


def add_localizer_arguments(parser) -> None:
    group = parser.add_argument_group("localizer (revtal bench localizer)")
    group.add_argument("--out", default="runs/bench_localizer", help="working folder (features, runs, tables)")
    group.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default 0 1 2)")
    group.add_argument("--videos", type=int, default=60,
                       help="synthetic videos, 2/3 training and 1/3 validation (default 60; the issue's set had 120)")
    group.add_argument("--dim", type=int, default=64, help="feature channels")
    group.add_argument("--data-seed", type=int, default=0, help="added to every feature set's generator seed")
    group.add_argument("--feature-sets", nargs="+", choices=sorted(FEATURE_SETS), default=sorted(FEATURE_SETS),
                       help="which independently generated feature sets to run (default all: A B C)")
    # defaults sized for a 2-core CPU (docs/LOCALIZER.md); the THUMOS recipe is 30 + 5 epochs at 1e-4
    group.add_argument("--epochs", type=int, default=12, help="epochs after warmup (default 12; the recipe's 30)")
    group.add_argument("--warmup-epochs", type=int, default=3, help="linear warmup epochs (default 3; the recipe's 5)")
    group.add_argument("--lr", type=float, default=4e-4, help="peak learning rate of both (default 4e-4; the recipe's 1e-4)")
    group.add_argument("--signal", type=float, default=3.0, help="action pattern strength over unit feature noise")
    group.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=["revtal", "reference"],
                       help="which to train: revtal's ActionFormer, the reference package (skipped with a note when "
                            "actionformer is not installed) and revtal's VSGN (default revtal reference)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override revtal's recipe (e.g. localizer.options.regression_bias_init=0)")
    group.add_argument("--tag", default="", help="suffix of this run's result files (e.g. an ablation's name)")


def _choice(args: argparse.Namespace, name: str):
    value = getattr(args, name, None)
    if value is not None:
        return value
    if args.quick and name in QUICK:
        return QUICK[name]
    return DEFAULTS.get(name)


def build_grid(args: argparse.Namespace) -> Grid:
    default_warmup, default_repeats, allocator = KINDS[args.kind]
    device = args.device or _default_device()
    repeats = args.repeats if args.repeats is not None else (QUICK["repeats"] if args.quick else default_repeats)
    options = {
        "device": device,
        "warmup": args.warmup if args.warmup is not None else default_warmup,
        "repeats": repeats,
        "threads": args.threads if args.threads is not None else (QUICK["threads"] if args.quick else None),
        "float_coefficients": tuple(args.dr2net_float),
        "exact_coefficients": tuple(args.dr2net_exact),
        "clip_batch": args.clip_batch,
        "allocator": allocator,
        "window_chunk": args.window_chunk,
        "init": args.init,
    }
    return Grid(
        models=_choice(args, "models"),
        modes=_choice(args, "modes"),
        depths=_choice(args, "depths"),
        frames=_choice(args, "frames"),
        img_sizes=_choice(args, "img_sizes"),
        batches=_choice(args, "batches"),
        clips=_choice(args, "clips"),
        options=options,
    )


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    if args.kind == "report":
        return _report(args)
    if args.kind == "localizer":
        if args.threads:
            torch.set_num_threads(args.threads)
        return reference_localizer.compare(
            args.out, seeds=args.seeds, videos=args.videos, dim=args.dim, data_seed=args.data_seed, epochs=args.epochs,
            warmup_epochs=args.warmup_epochs, lr=args.lr, signal=args.signal, implementations=args.implementations,
            feature_sets=args.feature_sets, overrides=args.overrides, tag=args.tag, json_path=args.json, settings=vars(args))
    grid = build_grid(args)
    unknown = [m for m in grid.models if m not in list_backbones()]
    if unknown:
        print(f"revtal bench: unknown models {unknown}; registered: {', '.join(list_backbones())}", file=sys.stderr)
        return 2
    try:
        configs, notes = grid.configs()
    except ValueError as err:
        print(f"revtal bench: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    machine = machine_info(grid.options["device"])
    print(f"revtal bench {args.kind}: {len(configs)} configurations on {machine['cpu_model']} "
          f"({machine['cpu_cores_available']} cores), device {machine['device']}, torch {machine['torch']}")
    def write_partial(partial) -> None:  # a long run killed halfway keeps what it measured
        if args.json:
            write_json(args.json, machine, partial, partial=True)

    result = run_configs(
        configs, timeout_s=args.timeout, progress=not args.no_progress, rounds=args.rounds, on_progress=write_partial
    )
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    _output(args, machine, result)
    failed = [e for e in result.skipped if e["status"] == "error"]
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    if not args.inputs:
        print("revtal bench report: give the JSON files of earlier runs with --inputs", file=sys.stderr)
        return 2
    try:
        machine, result = merge_json(args.inputs)
    except ValueError as err:
        print(f"revtal bench report: {err}", file=sys.stderr)
        return 2
    _output(args, machine, result)
    return 0


def _output(args: argparse.Namespace, machine: dict, result) -> None:
    if result.records:
        print(markdown_table(result.records))
    for entry in result.skipped:
        print(f"{entry['status']}: {record_label(entry)} ({entry['model']}): {entry['reason']}")
    if args.json:
        write_json(args.json, machine, result)
        print(f"wrote {args.json}")
    if args.plot:
        for path in write_plots(result.records, args.plot):
            print(f"wrote {path}")
