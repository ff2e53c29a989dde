"""Optimiser and learning-rate schedule: AdamW with separate backbone and head learning rates (the papers use
1e-5 for the backbone and 1e-4 for the head), linear warmup then cosine decay, stepped every iteration."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from revtal.localizers.blocks import ChannelLayerNorm, LayerScale


# Weight decay the way the transformer literature does it (ViT, Swin, minGPT, ActionFormer): matrices and kernels
# decay; biases, every parameter of a normalisation layer, learned residual scales (LayerScale) and position
# embeddings / class tokens do not, whatever their shape — ActionFormer's channel-first LayerNorm and LayerScale
# keep (1, C, 1) parameters, which a rule on ndim alone would decay.
_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, ChannelLayerNorm, LayerScale)
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "relative_position_bias_table")


def decays(module: nn.Module, name: str, parameter: torch.Tensor) -> bool:
    """Whether ``parameter``, registered on ``module`` under ``name`` (its own attribute name), is weight-decayed."""
    return (parameter.ndim >= 2 and not name.endswith("bias") and name not in _NO_DECAY_NAMES
            and not isinstance(module, _NO_DECAY_MODULES))


def decay_groups(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters of ``module``, each listed once, in registration order."""
    decayed, kept, seen = [], [], set()
    for owner in module.modules():
        for name, parameter in owner.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            (decayed if decays(owner, name, parameter) else kept).append(parameter)
    return decayed, kept


# a residual block's parameters are named <...>.blocks.<i>. (ViTs, Re²/Dr²Net stages keep the names), features.<s>.<i>.
# (torchvision's Swin), layer<s>.<i>. (ResNets) or s<k>.pathway<p>_res<i>. (SlowFast)
_BLOCK_NAME = re.compile(r"^(.*?(?:blocks\.\d+|features\.\d+\.\d+|layer\d+\.\d+|s\d+\.pathway\d+_res\d+))\.")


def layer_ids(module: nn.Module) -> tuple[dict[int, int], int]:
    """Depth of every parameter for layer-wise learning-rate decay: 0 for what comes before the first residual block
    (embeddings), ``i`` for the parameters of the ``i``-th block in registration order (and for parts between block
    ``i`` and the next), ``n + 1`` after the last (final norm). Returns ({id(parameter): depth}, n)."""
    blocks: dict[str, int] = {}
    named = list(module.named_parameters())
    for name, _ in named:
        match = _BLOCK_NAME.match(name)
        if match and match.group(1) not in blocks:
            blocks[match.group(1)] = len(blocks) + 1
    last_block = max((i for i, (name, _) in enumerate(named) if _BLOCK_NAME.match(name)), default=-1)
    depth, current = {}, 0
    for i, (name, parameter) in enumerate(named):
        match = _BLOCK_NAME.match(name)
        if match:
            current = blocks[match.group(1)]
        # between blocks (Swin's patch merging, a ResNet's downsampling) a part shares the depth of the block before
        depth[id(parameter)] = current if match or i < last_block else len(blocks) + 1
    return depth, len(blocks)


def recipe_optimizer(backbone: nn.Module | None, head: nn.Module, optim, foreach: bool | None = None
                     ) -> torch.optim.AdamW:
    """AdamW as a recipe's ``optim`` section sets it (learning rates, weight decay, ``layer_decay``, ``fused``),
    over ``backbone`` and ``head`` (a localizer or a classifier). The TAL and classification trainers and ``revtal
    plan`` build their optimizer here, so every option reaches every task and a plan simulates the trainer's
    optimizer; ``foreach`` as in :func:`build_optimizer`."""
    return build_optimizer(backbone, head, optim.backbone_lr, optim.head_lr, optim.weight_decay,
                           layer_decay=optim.layer_decay, foreach=foreach, fused=optim.fused)


def build_optimizer(
    backbone: nn.Module | None, head: nn.Module, backbone_lr: float, head_lr: float, weight_decay: float,
    layer_decay: float = 1.0, foreach: bool | None = None, fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: backbone and head at their learning rates, weight decay as
    :func:`decays` says; with ``layer_decay < 1`` (VideoMAE, BEiT) the backbone parameters at depth ``d`` of ``n``
    blocks (:func:`layer_ids`) train at ``backbone_lr * layer_decay ** (n + 1 - d)``. ``foreach``: torch's choice by
    default (the multi-tensor implementation on CUDA); ``revtal plan`` sets it to simulate a GPU's step on CPU.
    ``fused``: torch's fused AdamW kernel, which updates each parameter in place, where the multi-tensor one
    computes the update of all parameters at once and holds a temporary the size of all of them (4 GB for ViT-g:
    docs/SCALE.md); same maths and state layout."""
    groups = []
    for module, lr, tag in ((backbone, backbone_lr, "backbone"), (head, head_lr, "head")):
        if module is None:
            continue
        decay, no_decay = decay_groups(module)
        if tag == "backbone" and layer_decay != 1.0:
            depth, blocks = layer_ids(module)
            for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "_no_decay")):
                for d in sorted({depth[id(p)] for p in params}):
                    chosen = [p for p in params if depth[id(p)] == d]
                    groups.append({"params": chosen, "lr": lr * layer_decay ** (blocks + 1 - d), "weight_decay": wd,
                                   "name": f"{tag}{suffix}_layer{d}"})
            continue
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": f"{tag}"})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{tag}_no_decay"})
    if not groups:
        raise ValueError("nothing to optimise: no parameter requires grad")
    if fused:
        return torch.optim.AdamW(groups, fused=True)
    return torch.optim.AdamW(groups, foreach=foreach)


def optimizer_step(model: nn.Module, optimizer, scaler, lr_schedule, ema: "ModelEMA | None", clip_grad: float) -> None:
    """One optimizer step of a trainer: unscale and clip the gradients (``clip_grad`` > 0), step through the AMP
    scaler, clear the gradients, advance the LR schedule, update the EMA."""
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    lr_schedule.step()
    if ema is not None:
        ema.update(model)


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
