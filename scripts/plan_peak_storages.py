"""What is live at a `revtal plan` peak: the largest tensor storages, the op that made each and where it was called.

    PYTHONPATH=src python scripts/plan_peak_storages.py configs/anet_swin3d_t_dr2net.yaml --mode re2 \
        --set data.batch_size=1 [--top 25] [--steps 1] [--json out.json]

Runs the plan's simulation (revtal.bench.plan.plan_recipe: fake tensors, CUDA rules) with a LiveBytes meter that also
remembers, for every storage of at least --min-mib, the aten op that created it, the phase and the innermost revtal /
torchvision / torch.utils.checkpoint frames of the Python stack at that moment. Prints the storages live at the peak,
largest first, and their total by creating op.
"""

from __future__ import annotations

import argparse
import json
import traceback
from collections import Counter

from revtal.bench import plan as plan_module
from revtal.engine.config import load_config

_meters: list = []
_WHERE = ("/revtal/", "/torchvision/", "/torch/utils/checkpoint", "/torch/autograd/")


class _AttributedLiveBytes(plan_module.LiveBytes):
    min_bytes = 1 << 20

    def __init__(self):
        super().__init__()
        self.info: dict[int, dict] = {}
        self._op = None
        _meters.append(self)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._op = str(func)
        return super().__torch_dispatch__(func, types, args, kwargs)

    def track(self, tensor, category=None):
        new = id(tensor.untyped_storage()) not in self._live
        super().track(tensor, category)
        if new:
            record = self._live[id(tensor.untyped_storage())]
            if record.nbytes >= self.min_bytes:
                frames = [f for f in traceback.extract_stack()[:-2]
                          if any(w in f.filename for w in _WHERE) and "cuda_emulation" not in f.filename]
                self.info[record.token] = {
                    "op": self._op, "phase": self.phase, "shape": list(tensor.shape), "dtype": str(tensor.dtype),
                    "where": [f"{f.filename.split('/')[-1]}:{f.lineno} {f.name}" for f in frames[-6:]],
                }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--mode", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--min-mib", type=float, default=1.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    _AttributedLiveBytes.min_bytes = int(args.min_mib * (1 << 20))
    plan_module.LiveBytes = _AttributedLiveBytes  # simulate_steps makes its meter from the module's name
    config = load_config(args.config, args.set)
    result = plan_module.plan_recipe(config, args.mode, steps=args.steps)
    meter = _meters[-1]
    live = sorted(meter.live_at(meter._peak_event), key=lambda r: -r.nbytes)
    gib = float(1 << 30)
    print(f"peak {result.peak_bytes / gib:.3f} GiB in {result.phase} (step {result.step}); split "
          + ", ".join(f"{k} {v / gib:.3f}" for k, v in result.split.items()))
    rows = []
    for r in live:
        info = meter.info.get(r.token, {})
        rows.append({"nbytes": r.nbytes, "category": r.category, **info})
    for row in rows[:args.top]:
        print(f"{row['nbytes'] / (1 << 20):10.1f} MiB  {row['category']:<11} {row.get('phase') or '?':<9} "
              f"{row.get('op') or '(tracked)':<32} {row.get('dtype', '')} {row.get('shape', '')}")
        for w in row.get("where", []):
            print(f"{'':14}{w}")
    by_op = Counter()
    for row in rows:
        by_op[(row["category"], row.get("op") or "(small or tracked)")] += row["nbytes"]
    print("total by op:")
    for (category, op), nbytes in by_op.most_common(15):
        print(f"{nbytes / (1 << 20):10.1f} MiB  {category:<11} {op}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"plan": result.to_dict(), "live_at_peak": rows}, f, indent=1)


if __name__ == "__main__":
    main()
