"""``python -m revtal.commands.plan_gpu_check --out OUT.json``: ``revtal plan``'s predicted peak beside
``torch.cuda.max_memory_allocated`` of the same training steps on the GPU, for three recipes scaled to fit one GPU
(:func:`revtal.bench.plan.cuda_check`; run by ``scripts/gpu_check.sh``). Without CUDA it writes ``no_cuda``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    from revtal.bench.plan import GPU_CHECK_RECIPES, cuda_check
    from revtal.bench.runner import machine_info

    parser = argparse.ArgumentParser(prog="python -m revtal.commands.plan_gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--recipes", nargs="+", default=list(GPU_CHECK_RECIPES), choices=list(GPU_CHECK_RECIPES))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        result = {"status": "no_cuda"}
    else:
        result = {"status": "ok", "records": cuda_check(args.recipes), "machine": machine_info("cuda")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for record in result.get("records", []):
        print(f"{record['recipe']:18s} {record['mode']:14s} plan {record['plan_cuda_allocated_bytes'] / 2**30:7.3f} GiB"
              f"  cuda {record['cuda_max_allocated_bytes'] / 2**30:7.3f} GiB  ratio {record['allocated_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
