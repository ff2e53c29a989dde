"""The benchmarked training modes, each as the model one training step runs: a backbone in that mode plus a trivial
head and loss.

Each benchmark mode is a training recipe's ``backbone`` section (:func:`training_settings`) and its backbone is
built by that recipe's :class:`~revtal.engine.modes.TrainingMode`, the very object the trainer builds with: the
benchmark measures the modules training runs. The head is a 1×1 temporal convolution to one channel and the loss
the mean of its squared output: small next to any backbone, and something to train when the backbone is frozen.
Every mode starts from the same randomly initialised backbone (same seed), so modes differ only in how they run and
backpropagate it. The peers (RevLib, MemCNN) are not training modes: they wrap the conventional backbone's blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from revtal.bench.configs import ADAPTER_MODES, MODE_DESCRIPTIONS, PEER_MODES, BenchConfig, is_vit
from revtal.bench.peers import PeerUnavailable, attach_peer
from revtal.engine.config import config_from_dict
from revtal.engine.modes import TrainingMode, get_mode
from revtal.reversible.stage import reversible_stages

# what a benchmarked mode sets in the training recipe's backbone section besides its name (the peers measure the
# conventional backbone's blocks, wrapped)
RECIPE_SETTINGS: dict[str, Callable[[BenchConfig], dict[str, Any]]] = {
    # Dr²Net dynamic finetuning as it starts, at the configuration's (α, β) (exact: the schedule's first point; float:
    # a point the schedule passes through), with the configuration's backprop
    "dr2net": lambda c: {"backprop": c.backprop,
                         "schedule": {"alpha0": c.coefficients[0], "beta0": c.coefficients[1]}},
    # the benchmark clip is one clip of the adapter method, which cuts the video into its clips itself
    **{name: (lambda c, name=name: {name: {"clip_frames": c.frames}}) for name in ADAPTER_MODES},
}


class ModeUnavailable(RuntimeError):
    """The mode cannot run in this build (a missing optional piece); the benchmark reports it and goes on."""


class TrainingTarget(nn.Module):
    """``video -> scalar loss``: the features, run as their training mode runs them (a frozen backbone under no_grad
    in eval mode), and the head."""

    def __init__(self, features: nn.Module, out_channels: int, mode: TrainingMode):
        super().__init__()
        self.features = features
        self.mode = mode
        self.head = nn.Conv1d(out_channels, 1, kernel_size=1)

    @property
    def frozen(self) -> bool:
        return not self.mode.backbone_grad

    def train(self, training: bool = True) -> "TrainingTarget":
        super().train(training)
        self.mode.set_training(self.features, training)
        return self

    def forward(self, video: Tensor) -> Tensor:
        return self.head(self.mode.features(self.features, video)).pow(2).mean()


@dataclass
class BuiltMode:
    target: TrainingTarget
    depth: int | None
    info: dict = field(default_factory=dict)  # recorded with the measurement (coefficients in use, ...)


def training_settings(config: BenchConfig):
    """The training recipe's ``backbone`` section (:class:`~revtal.engine.config.BackboneConfig`) that
    ``config``'s mode measures."""
    options = {"depth": config.depth} if config.depth is not None and is_vit(config.model) else {}
    mode = "conventional" if config.mode in PEER_MODES else config.mode
    section = {"name": config.model, "options": options, "mode": mode, "window_chunk": config.window_chunk,
               **RECIPE_SETTINGS.get(config.mode, lambda c: {})(config)}
    return config_from_dict({"backbone": section}, source=f"benchmark mode {config.label}").backbone


def build_target(config: BenchConfig) -> BuiltMode:
    """The model of ``config``: backbone built and put in the mode by the training mode's own object, wrapped with
    the head. Raises ModeUnavailable or PeerUnavailable when an optional piece is missing."""
    settings = training_settings(config)
    mode = get_mode(settings.mode)
    torch.manual_seed(config.seed)
    try:
        features = mode.build_extractor(settings, config.frames, config.img_size)
    except ImportError as err:
        raise ModeUnavailable(f"{config.label}: a piece of this mode is not in this build: {err}") from err
    backbone = getattr(features, "backbone", features)  # adapter methods wrap the backbone
    # children, not len(): a reversible stage refuses len() (per-block access would bypass it)
    depth = len(list(backbone.net.blocks.children())) if is_vit(config.model) else None
    info: dict = {"label": config.label, "description": MODE_DESCRIPTIONS[config.label], "training_mode": mode.name}
    if config.init == "finetune":
        info["norm_scales_started_at_one"] = start_zero_norm_scales_at_one(features)
    if config.mode in PEER_MODES:
        if not is_vit(config.model):
            raise PeerUnavailable(f"{config.mode} peer: the peer stacks wrap ViT blocks; {config.model} is not a ViT")
        attach_peer(backbone.net, config.mode)
    stages = reversible_stages(features)
    if stages:
        info["alpha"], info["beta"] = stages[0].alpha, stages[0].beta
        info["backprop"] = stages[0].backprop
        if stages[0].backprop == "exact":
            info["exact_bits_per_branch"] = stages[0].storage_bits_per_branch()
    return BuiltMode(TrainingTarget(features, features.out_channels, mode), depth, info)


def start_zero_norm_scales_at_one(model: nn.Module) -> int:
    """Set every BatchNorm scale that is all zeros to one (``BenchConfig.init == "finetune"``); returns how many."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and weight is not None and not weight.any():
                weight.fill_(1.0)
                count += 1
    return count


def exact_storage(target: nn.Module) -> dict:
    """What the exact stages of ``target`` stored per element in their latest forward (empty outside exact mode):
    the buffer's bits, and all of it with the float output, per stage (``revtal.reversible.exact.ExactStorage``)."""
    stored = [s.exact_arithmetic.last_storage for s in reversible_stages(target) if s.backprop == "exact"]
    stored = [s for s in stored if s is not None]
    if not stored:
        return {}
    return {
        "exact_buffer_bits_per_element": [s.buffer_bits for s in stored],
        "exact_stored_bits_per_element": [s.bits_per_element for s in stored],
        "exact_information_bits_per_element": [round(s.information_bits, 2) for s in stored],
    }

