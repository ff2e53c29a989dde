"""Optimiser and learning-rate schedule: AdamW with separate backbone and head learning rates (the papers use
1e-5 for the backbone and 1e-4 for the head), linear warmup then cosine decay, stepped every iteration."""

from __future__ import annotations

import math

import torch
from torch import nn


def _decays(name: str, p: torch.Tensor) -> bool:
    # norms, biases, gates and embeddings are not weight-decayed
    return p.ndim >= 2 and not name.endswith(("pos_embed", "cls_token"))


def build_optimizer(
    backbone: nn.Module | None, head: nn.Module, backbone_lr: float, head_lr: float, weight_decay: float
) -> torch.optim.AdamW:
    groups = []
    for module, lr, tag in ((backbone, backbone_lr, "backbone"), (head, head_lr, "head")):
        if module is None:
            continue
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if _decays(n, p)]
        no_decay = [p for n, p in named if not _decays(n, p)]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": f"{tag}"})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{tag}_no_decay"})
    if not groups:
        raise ValueError("nothing to optimise: no parameter requires grad")
    return torch.optim.AdamW(groups)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """LambdaLR: linear warmup over ``warmup_steps`` from 0, then cosine to ``min_ratio`` × base LR at the end."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ModelEMA:
    """Exponential moving average of a model's floating-point state (parameters and buffers)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # warm the average up early in training, as is common practice
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
