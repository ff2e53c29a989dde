"""Mixup / CutMix with label smoothing on batches of video clips, as VideoMAE finetunes (mixup α 0.8, cutmix α 1.0,
label smoothing 0.1, one of the two per batch, chosen with ``switch_prob``).

A batch is mixed with itself in reverse order: clip ``i`` with clip ``B - 1 - i``, by a weight λ ~ Beta(α, α).
Mixup blends whole clips, ``λ·x_i + (1 − λ)·x_j``; CutMix pastes one box of ``x_j`` into ``x_i`` at the same place in
every frame (the box area is ``1 − λ`` of the frame, clipped at the border, and λ is then recomputed from the area
actually pasted). Targets are mixed the same way from label-smoothed one-hot vectors (``1 − ε + ε/C`` on the class,
``ε/C`` elsewhere), and the loss is the cross entropy against these soft targets.

Draws come from a ``torch.Generator`` the caller seeds (the trainer: from the seed and the step), so a resumed run
mixes the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    off = smoothing / num_classes
    targets = torch.full((labels.numel(), num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1).long(), 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class MixupCutmix:
    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1):
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1 or not 0 <= switch_prob <= 1:
            raise ValueError(f"mixup needs alphas >= 0 and probabilities in [0, 1], got mixup_alpha={mixup_alpha}, "
                             f"cutmix_alpha={cutmix_alpha}, prob={prob}, switch_prob={switch_prob}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @staticmethod
    def _beta(alpha: float, generator: torch.Generator) -> float:
        # Beta(a, a) from two Gamma draws through the generator (torch.distributions has no generator argument)
        a = torch._standard_gamma(torch.tensor([alpha, alpha], dtype=torch.float64), generator=generator)
        return float(a[0] / a.sum())

    def __call__(self, video: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, dict]:
        """(mixed video (B, C, T, H, W), soft targets (B, classes), what was done: kind, lam)."""
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        draw = torch.rand(2, generator=generator, dtype=torch.float64)
        if not self.active or float(draw[0]) >= self.prob:
            return video, targets, {"kind": "none", "lam": 1.0}
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or float(draw[1]) < self.switch_prob)
        lam = self._beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha, generator)
        flipped = video.flip(0)
        if use_cutmix:
            height, width = video.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            cut_h, cut_w = int(height * cut), int(width * cut)
            centre = torch.rand(2, generator=generator, dtype=torch.float64)
            cy, cx = int(float(centre[0]) * height), int(float(centre[1]) * width)
            top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            mixed = video.clone()
            mixed[..., top:bottom, left:right] = flipped[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)
            kind = "cutmix"
        else:
            mixed = video * lam + flipped * (1.0 - lam)
            kind = "mixup"
        targets = targets * lam + targets.flip(0) * (1.0 - lam)
        return mixed, targets, {"kind": kind, "lam": lam}
