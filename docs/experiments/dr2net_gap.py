"""Why Dr²Net trailed conventional finetuning in the demo (issue 16, item 3): the runs behind docs/STUDY.md's
section "Dr²Net vs conventional on the demo recipe".

    PYTHONPATH=src python docs/experiments/dr2net_gap.py OUT --seeds 0,1,2 [--runs conventional,dr2net,...]
    PYTHONPATH=src python docs/experiments/dr2net_gap.py OUT --parity      # exact vs autograd gradients

Every run is the demo's recipe (``revtal.experiments.demo.demo_config``) at one intra-op thread on the demo's dataset,
with a backbone pretrained for 600 steps per seed (pretraining seed = training seed); only the named overrides
differ. ``dr2net_autograd`` trains the same coupling and schedule with ordinary autograd instead of exact
reversible backprop. Results: OUT/seed<k>_<run>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

RUNS = {
    "conventional": {"backbone.mode": "conventional"},
    "dr2net": {},
    "dr2net_autograd": {},
    "dr2net_slow": {"backbone.schedule.end_epoch": 10.0},
    "fixed_start": {"backbone.mode": "hard", "backbone.alpha": 1.0, "backbone.beta": 0.1},
    "hard": {"backbone.mode": "hard", "backbone.alpha": 0.3, "backbone.beta": 0.7},
    "dr2net_lr5e-4": {"optim.backbone_lr": 5e-4},
    "conventional_lr5e-4": {"backbone.mode": "conventional", "optim.backbone_lr": 5e-4},
}


def base_config(out: Path, seed: int):
    from revtal.engine.datasets import resolve_dataset
    from revtal.experiments.demo import demo_config, pretrain_backbone

    base = resolve_dataset(demo_config(out), out)
    checkpoint = out / f"seed{seed}" / "pretrain" / "backbone.pt"
    if not checkpoint.exists():
        print(json.dumps({"seed": seed, "pretrain": pretrain_backbone(base, checkpoint.parent, steps=600, seed=seed)}))
    return base.with_values({"backbone.pretrained": str(checkpoint), "train.seed": seed})


def train(out: Path, seed: int, run: str) -> dict:
    import revtal
    from revtal.engine.trainer import Trainer

    config = base_config(out, seed).with_values({**RUNS[run], "train.out_dir": str(out / f"seed{seed}_{run}")})
    trainer = Trainer(config, progress=False)
    if run == "dr2net_autograd":
        revtal.set_backprop(trainer.model, "vanilla")
        trainer.hooks._unverified_exact = []  # nothing to verify: no reconstruction happens
    last = trainer.fit()[-1]
    return {"seed": seed, "run": run, "average_mAP": last.metrics["average_mAP"], "mAP": last.metrics["mAP"],
            "alpha_beta_end": [last.alpha, last.beta]}


def parity(out: Path) -> None:
    """Backbone gradients of exact backprop vs ordinary autograd on one training batch, along the schedule. The
    localizer runs in eval mode: ActionFormer's loss normaliser is a running average updated by every training-mode
    loss, so two training-mode losses of the same batch differ by design."""
    import revtal
    from revtal.engine.runtime import model_inputs
    from revtal.engine.trainer import Trainer

    trainer = Trainer(base_config(out, 0).with_values({"train.out_dir": str(out / "parity")}), progress=False)
    model = trainer.model.train()
    model.localizer.eval()
    batch = next(iter(trainer.train_loader))
    video, mask = model_inputs(batch, trainer.device)
    segments, labels = trainer._targets(batch)

    def gradients(backprop, alpha, beta):
        revtal.set_backprop(model, backprop)
        used = revtal.set_coefficients(model, alpha, beta)
        model.zero_grad(set_to_none=True)
        model.localizer.loss(model(video, mask), segments, labels)["total"].backward()
        return used, {n: p.grad.clone() for n, p in model.extractor.named_parameters() if p.grad is not None}

    for alpha, beta in [(1.0, 0.1), (0.825, 0.25), (0.65, 0.4), (0.3, 0.7)]:
        used, exact = gradients("exact", alpha, beta)
        _, autograd = gradients("vanilla", *used)
        diff = sum((exact[n] - autograd[n]).square().sum() for n in autograd).sqrt()
        norm = sum(g.square().sum() for g in autograd.values()).sqrt()
        print(f"(alpha, beta) = {used}: relative difference of the backbone gradients {float(diff / norm):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--parity", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.parity:
        return parity(args.out)
    for seed in (int(s) for s in args.seeds.split(",")):
        for run in args.runs.split(","):
            path = args.out / f"seed{seed}_{run}.json"
            if not path.exists():
                path.write_text(json.dumps(train(args.out, seed, run)))
            print(path.read_text())


if __name__ == "__main__":
    main()
