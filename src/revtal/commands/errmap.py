"""``revtal errmap``: the gradient error of memory-free backprop over the (α, β) plane (:mod:`revtal.bench.errmap`)."""

from __future__ import annotations

from pathlib import Path

import torch

from revtal.bench.errmap import DTYPES, LOCAL_IMAGE_MODELS, MEMORY_FREE_MODES, error_map


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True,
                        help=f"a backbone name for revtal.backbones.build (e.g. vit_s_video, swin3d_t) or one of "
                             f"{sorted(LOCAL_IMAGE_MODELS)}")
    parser.add_argument("--grid", type=int, default=10, help="N: the map has N x N points (default 10)")
    parser.add_argument("--backprop", choices=MEMORY_FREE_MODES, default="reversible",
                        help="the memory-free backprop compared with vanilla (default reversible)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="float32, float64, or bfloat16 (autocast with float32 parameters)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="a local checkpoint for the backbone (default: random initialisation)")
    parser.add_argument("--beta-min", type=float, default=0.1, help="smallest beta of the grid (default 0.1)")
    parser.add_argument("--num-frames", type=int, default=4, help="frames of the random input clip (default 4)")
    parser.add_argument("--img-size", type=int, default=32, help="height = width of the random input (default 32)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the random input (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the input and the loss")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if args.threads < 0:
        raise SystemExit(f"revtal errmap: --threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    _, paths, summary = error_map(
        args.model, args.out, grid=args.grid, backprop=args.backprop, dtype=args.dtype, pretrained=args.pretrained,
        beta_min=args.beta_min, num_frames=args.num_frames, img_size=args.img_size, batch=args.batch, seed=args.seed,
        progress=not args.no_progress)
    print(summary)
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0
