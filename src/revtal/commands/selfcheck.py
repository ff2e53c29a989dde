"""``revtal selfcheck``: verify the reversible engine on a tiny ViT and print what was checked
(:mod:`revtal.bench.selfcheck`); exits with 1 if any check fails."""

from __future__ import annotations

from revtal.bench.selfcheck import selfcheck


def add_arguments(parser) -> None:
    parser.add_argument("--depth", type=int, default=6, help="transformer blocks of the tiny ViT (default 6)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    return selfcheck(args.depth, args.seed)
