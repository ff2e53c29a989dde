"""``python -m revtal.commands.gpu_check --out OUT.json``: exact backprop on CUDA, and each mode's CUDA peak
(:func:`revtal.bench.gpu_check.gpu_check`; run by ``scripts/gpu_check.sh``). Not a ``revtal`` sub-command: it is
the GPU machine's check script."""

from __future__ import annotations

import argparse

from revtal.bench.gpu_check import MODELS, gpu_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m revtal.commands.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the checks only, for testing)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--skip-memory", action="store_true", help="reconstruction checks only")
    args = parser.parse_args(argv)
    return gpu_check(args.out, args.device, args.models, args.frames, args.img_size, args.skip_memory)


if __name__ == "__main__":
    raise SystemExit(main())
