"""Where and how a model runs, shared by training and inference: the device of ``train.device``, the autocast
context of ``optim.amp``, and a batch's model inputs on that device."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``train.device``: auto | cpu | cuda."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available: set train.device: cpu (or auto)")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """The autocast context of ``optim.amp`` (none | bf16 | fp16) on ``device``."""
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def model_inputs(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, frame mask) of a video batch, or (features, mask) of a precomputed-feature batch."""
    if "video" in batch:
        return batch["video"].to(device, non_blocking=True), batch["frame_mask"].to(device)
    return batch["features"].to(device, non_blocking=True), batch["mask"].to(device)
