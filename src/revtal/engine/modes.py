"""Training modes of the backbone: one object per mode, shared by the trainer, the benchmark, the demo and the study.

The training mode is what every table of the papers compares. A :class:`TrainingMode` owns everything that differs
between modes, so that no other module branches on a mode's name:

* preparing the backbone: build it (from its pretrained checkpoint, unless the mode trains from scratch), convert
  it, wrap it (LoSA) and freeze what does not train — :meth:`TrainingMode.build_extractor`;
* whether gradients flow through it at all (``frozen``: the backbone runs under ``no_grad`` in eval mode);
* its per-step hooks — :class:`ModeHooks`: the Dr²Net coefficient schedule, the float-reconstruction monitor and
  the first step's bitwise check of exact stages — with one ``state_dict`` for checkpoints.

==============  ===========================================================================================
``frozen``       backbone under ``no_grad`` in eval mode; only the localizer trains (head-only baseline)
``conventional`` full end-to-end finetuning with plain autograd
``checkpoint``   end to end, each block under ``torch.utils.checkpoint`` (non-reentrant)
``re2``          Re²TAL: rewired to α=0, β=1 from the pretrained weights, float reversible backprop
``hard``         Dr²Net "hard" finetuning: reversible at fixed (α, β) from the pretrained weights, no schedule
``dr2net``       Dr²Net dynamic finetuning: starts at (α0, β0) ≈ the pretrained network and follows the schedule
``scratch``      a reversible network at the schedule's end point trained from random initialisation
``losa``         frozen backbone + LoSA adapters (no gradient through the backbone)
``unipt``        frozen backbone + UniPT's parallel network (no gradient through the backbone; LoSA Tab. 2)
``st_adapter``   frozen ViT + ST-Adapters inside its blocks (backprop through the frozen blocks; LoSA Tab. 2)
``aim``          frozen ViT + AIM's temporal/spatial/joint adapters in its blocks (backprop through it; Tab. 2)
==============  ===========================================================================================

A mode reads its settings from the ``backbone`` section of the config (:class:`~revtal.engine.config.
BackboneConfig`): the benchmark builds such a section for each mode it measures and calls the same
:meth:`TrainingMode.build_extractor`, so it measures exactly the module training runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from revtal.adapters.aim import AIM
from revtal.adapters.losa import LoSA
from revtal.adapters.st_adapter import STAdapter
from revtal.adapters.unipt import UniPT
from revtal.backbones import build
from revtal.engine.typed_config import ConfigError
from revtal.reversible.convert import convert
from revtal.reversible.safety import ReconstructionEvent, ReconstructionMonitor
from revtal.reversible.schedule import CoefficientSchedule
from revtal.reversible.stage import reversible_stages

if TYPE_CHECKING:  # the config imports the modes (to validate with them); a mode only reads its sections
    from revtal.engine.config import BackboneConfig, Config


class TrainingMode:
    """The default mode behaviour: an unconverted backbone, trained end to end with autograd."""

    name = "conventional"
    description = "full end-to-end finetuning with plain autograd"
    backbone_grad = True  # gradients flow through the backbone (False: it runs under no_grad, in eval mode)
    loads_pretrained = True

    def validate(self, config: "Config", source: str) -> None:
        """Raise a :class:`~revtal.engine.typed_config.ConfigError` for what this mode cannot train with: by
        default, precomputed features (only a frozen backbone's features can stand in for the videos); a mode with
        coefficients, a β that exact backprop would round to 0."""
        if config.data.features_dir:
            raise ConfigError(
                f"{source}: data.features_dir trains on precomputed features, which needs backbone.mode: frozen "
                f"(got {config.backbone.mode!r})"
            )
        settings = config.backbone
        if settings.backprop == "exact":  # exact arithmetic rounds β to p/2^k, k <= beta_bits
            smallest = 2.0 ** -(settings.beta_bits + 1)  # and below this, to 0
            for key, beta in self.exact_betas(settings):
                if beta <= smallest:
                    raise ConfigError(f"{source}: {key}={beta:g} rounds to 0 with backbone.beta_bits="
                                      f"{settings.beta_bits} (exact backprop); raise backbone.beta_bits")

    def exact_betas(self, settings: "BackboneConfig") -> list[tuple[str, float]]:
        """The (dotted key, β) pairs this mode converts with from the config (none: the mode sets no β)."""
        return []

    def backbone_frames(self, settings: "BackboneConfig", video_frames: int) -> int:
        """Frames of one backbone input: the whole sampled video, except for modes that run it over clips."""
        return video_frames

    def build_extractor(self, settings: "BackboneConfig", video_frames: int, img_size: int,
                        weights: dict | None = None) -> nn.Module:
        """The feature extractor this mode trains: backbone built (and loaded from ``settings.pretrained`` through
        :func:`revtal.backbones.build`, which infers the checkpoint's layout), converted, wrapped and frozen.
        ``weights``: a trained extractor's state dict to build from instead (rebuilding a trained model: the layout
        is inferred from it the same way, whatever the mode)."""
        pretrained = settings.pretrained if (settings.pretrained and self.loads_pretrained) else None
        if weights is not None:
            pretrained = weights
        backbone = build(settings.name, pretrained=pretrained, num_frames=self.backbone_frames(settings, video_frames),
                         img_size=img_size, trust_checkpoint=settings.trust_checkpoint, **settings.options)
        self.convert(backbone, settings)
        return self.wrap(backbone, settings)

    def convert(self, backbone: nn.Module, settings: "BackboneConfig") -> None:
        """Rewire ``backbone`` in place for this mode (default: leave its blocks as built). ``backbone.window_chunk``
        is an option of Video Swin's attention, not of the conversion: unconverted blocks compute it chunk by chunk
        too, without recompute (conventional finetuning keeps every chunk's scores for backward, as the library
        does; a backbone without gradients, frozen or under adapters, holds one chunk's scores at a time)."""
        if settings.window_chunk:
            # a converter family's module imports its library (torchvision): loaded when the option is set
            from revtal.reversible.video_swin import chunk_window_attention

            chunk_window_attention(backbone, settings.window_chunk, recompute=False)

    def features(self, extractor: nn.Module, video):
        """Run the extractor as this mode trains it (a frozen backbone under ``no_grad``)."""
        if self.backbone_grad:
            return extractor(video)
        with torch.no_grad():
            return extractor(video)

    def set_training(self, extractor: nn.Module, training: bool) -> None:
        """``.train(training)`` for the extractor: a frozen one stays in eval mode (frozen BatchNorm statistics, no
        dropout)."""
        extractor.train(training and self.backbone_grad)

    def wrap(self, backbone: nn.Module, settings: "BackboneConfig") -> nn.Module:
        return backbone

    def schedule(self, settings: "BackboneConfig", iters_per_epoch: int) -> CoefficientSchedule | None:
        """The coefficient schedule the mode follows while training (default: none, the coefficients stay)."""
        return None

    def hooks(self, model: nn.Module, settings: "BackboneConfig", iters_per_epoch: int) -> "ModeHooks":
        """The per-step hooks of one training run of ``model`` (built by :meth:`build_extractor`)."""
        monitor = None
        if settings.monitor_every > 0 and any(s.backprop == "reversible" for s in reversible_stages(model)):
            monitor = ReconstructionMonitor(model, every=settings.monitor_every, tolerance=settings.monitor_tolerance,
                                            fallback=settings.monitor_fallback)
        return ModeHooks(model, self.schedule(settings, iters_per_epoch), monitor,
                         calibration=settings.schedule.calibrate_options())

    def __repr__(self) -> str:
        return f"TrainingMode({self.name!r})"


class FrozenMode(TrainingMode):
    name = "frozen"
    description = "backbone under no_grad in eval mode; only the localizer trains (head-only baseline)"
    backbone_grad = False

    def validate(self, config: "Config", source: str) -> None:
        """Anything goes: precomputed features are what a frozen backbone gives."""

    def wrap(self, backbone: nn.Module, settings: "BackboneConfig") -> nn.Module:
        backbone.requires_grad_(False)
        return backbone


class CheckpointMode(TrainingMode):
    name = "checkpoint"
    description = "end to end, each block under torch.utils.checkpoint (non-reentrant)"

    def convert(self, backbone: nn.Module, settings: "BackboneConfig") -> None:
        convert(backbone, "original", backprop="checkpoint", window_chunk=settings.window_chunk)


class Re2Mode(TrainingMode):
    name = "re2"
    description = "Re²TAL: rewired to alpha=0, beta=1 from the pretrained weights, float reversible backprop"

    def convert(self, backbone: nn.Module, settings: "BackboneConfig") -> None:
        convert(backbone, "re2", backprop="reversible", window_chunk=settings.window_chunk)


class FixedCoefficientMode(TrainingMode):
    """Dr²Net at fixed coefficients (``hard``: ``backbone.alpha/beta`` from the pretrained weights)."""

    name = "hard"
    description = "Dr²Net hard finetuning: reversible at fixed (alpha, beta) from the pretrained weights"

    def coefficients(self, settings: "BackboneConfig") -> tuple[float, float]:
        return settings.alpha, settings.beta

    def exact_betas(self, settings: "BackboneConfig") -> list[tuple[str, float]]:
        return [("backbone.beta", settings.beta)]

    def convert(self, backbone: nn.Module, settings: "BackboneConfig") -> None:
        alpha, beta = self.coefficients(settings)
        convert(backbone, "dr2net", alpha=alpha, beta=beta, backprop=settings.backprop,
                beta_bits=settings.beta_bits, window_chunk=settings.window_chunk)


class ScratchMode(FixedCoefficientMode):
    name = "scratch"
    description = "a reversible network at the schedule's end point trained from random initialisation"
    loads_pretrained = False

    def coefficients(self, settings: "BackboneConfig") -> tuple[float, float]:
        return settings.schedule.alpha_end, settings.schedule.beta_end

    def exact_betas(self, settings: "BackboneConfig") -> list[tuple[str, float]]:
        return [("backbone.schedule.beta_end", settings.schedule.beta_end)]


class Dr2NetMode(FixedCoefficientMode):
    name = "dr2net"
    description = "Dr²Net dynamic finetuning: starts at (alpha0, beta0) and follows the coefficient schedule"

    def coefficients(self, settings: "BackboneConfig") -> tuple[float, float]:
        return settings.schedule.alpha0, settings.schedule.beta0

    def exact_betas(self, settings: "BackboneConfig") -> list[tuple[str, float]]:
        return [("backbone.schedule.beta0", settings.schedule.beta0),
                ("backbone.schedule.beta_end", settings.schedule.beta_end)]

    def schedule(self, settings: "BackboneConfig", iters_per_epoch: int) -> CoefficientSchedule:
        return settings.schedule.build(iters_per_epoch)


class AdapterMode(TrainingMode):
    """A frozen backbone wrapped by an adapter method of :mod:`revtal.adapters` that runs it over clips; the
    method's options are the ``backbone.<section>`` settings."""

    section = "losa"  # the BackboneConfig field holding the method's config
    adapter: type = LoSA  # its FrozenBackboneAdapter class

    def validate(self, config: "Config", source: str) -> None:
        super().validate(config, source)
        key = f"backbone.{self.section}.clip_frames"
        clip_frames = getattr(config.backbone, self.section).clip_frames
        if config.data.mode == "snippets":
            raise ConfigError(f"{source}: backbone.mode: {self.name} cuts the video into clips itself ({key}); use "
                              "data.mode: frames with it")
        # a trimmed clip (task: classification) is one backbone input cut into the adapter's clips
        if config.task == "classification" and config.data.num_frames % clip_frames:
            raise ConfigError(f"{source}: backbone.mode {self.name} runs the backbone over clips of {key}="
                              f"{clip_frames} frames; data.num_frames={config.data.num_frames} must be a multiple of it")

    def backbone_frames(self, settings: "BackboneConfig", video_frames: int) -> int:
        return getattr(settings, self.section).clip_frames  # the backbone takes one clip of clip_frames

    def wrap(self, backbone: nn.Module, settings: "BackboneConfig") -> nn.Module:
        return self.adapter(backbone, getattr(settings, self.section).build())


class LoSAMode(AdapterMode):
    name = "losa"
    description = "frozen backbone + LoSA adapters (no gradient through the backbone)"
    section, adapter = "losa", LoSA


class UniPTMode(AdapterMode):
    name = "unipt"
    description = "frozen backbone + UniPT's parallel network (no gradient through the backbone)"
    section, adapter = "unipt", UniPT


class STAdapterMode(AdapterMode):
    name = "st_adapter"
    description = "frozen ViT + ST-Adapters inside its blocks (gradients pass through the frozen blocks)"
    section, adapter = "st_adapter", STAdapter


class AIMMode(AdapterMode):
    name = "aim"
    description = "frozen ViT + AIM's temporal, spatial and joint adapters in its blocks (gradients pass through it)"
    section, adapter = "aim", AIM


_MODES: dict[str, TrainingMode] = {}


def register_mode(mode: TrainingMode) -> TrainingMode:
    if mode.name in _MODES:
        raise ValueError(f"training mode {mode.name!r} is already registered")
    _MODES[mode.name] = mode
    return mode


for _mode in (FrozenMode(), TrainingMode(), CheckpointMode(), Re2Mode(), FixedCoefficientMode(), Dr2NetMode(),
              ScratchMode(), LoSAMode(), UniPTMode(), STAdapterMode(), AIMMode()):
    register_mode(_mode)


def mode_names() -> tuple[str, ...]:
    return tuple(_MODES)


def get_mode(name: str) -> TrainingMode:
    try:
        return _MODES[name]
    except KeyError:
        raise ValueError(f"unknown training mode {name!r}; modes: {', '.join(_MODES)}") from None


class ModeHooks:
    """What a mode does around each training step: apply the coefficient schedule before the forward, spot-check
    float reconstruction (:class:`~revtal.reversible.safety.ReconstructionMonitor`), and verify on the run's first
    step that every exact stage reconstructs its input bitwise (a non-deterministic recompute would silently corrupt
    gradients otherwise)."""

    def __init__(self, model: nn.Module, schedule: CoefficientSchedule | None = None, monitor=None,
                 calibration: dict[str, Any] | None = None):
        self.model = model
        self.schedule = schedule
        self.monitor = monitor
        self.calibration = dict(calibration or {})  # keyword arguments of CoefficientSchedule.calibrate
        self._unverified_exact = [s for s in reversible_stages(model) if s.backprop == "exact"]
        self._verifying: list = []

    def start(self, extractor: nn.Module, example_input) -> str | None:
        """Before the first step of a run: choose the end point of an ``end: auto`` schedule on the actual model
        and input (once; a resumed run keeps the one it measured). Returns the report's summary, if any."""
        if self.schedule is None or self.schedule.end != "auto" or self.schedule.resolved_end is not None:
            return None
        return self.schedule.calibrate(extractor, example_input, **self.calibration).summary()

    def before_step(self, epoch: int, iteration: int, step: int) -> tuple[float, float] | None:
        """Call before the forward of ``iteration`` (``step``: optimizer steps so far); returns (α, β) in use."""
        coefficients = self.schedule.apply(self.model, epoch, iteration) if self.schedule is not None else None
        if self.monitor is not None:
            self.monitor.before_forward(step)
        self._verifying, self._unverified_exact = self._unverified_exact, []
        for stage in self._verifying:
            stage.verify_next_backward()
        return coefficients

    def after_backward(self) -> list[ReconstructionEvent]:
        """Call after the backward; raises if an exact stage did not reconstruct bitwise, returns monitor events."""
        for stage in self._verifying:
            check = stage.last_check
            if check is None or not (check.bitwise or check.simulated):
                raise RuntimeError(
                    f"exact backprop did not reconstruct the input of stage {stage.stage_name!r} bitwise on the "
                    f"first training step (max abs error {getattr(check, 'max_abs_error', float('nan'))}): the "
                    "blocks do not recompute deterministically. On CUDA set train.deterministic: true "
                    "(torch.use_deterministic_algorithms) and CUBLAS_WORKSPACE_CONFIG=:4096:8."
                )
        self._verifying = []
        return self.monitor.after_backward() if self.monitor is not None else []

    def state_dict(self) -> dict[str, Any]:
        return {
            "coefficients": self.schedule.state_dict() if self.schedule is not None else None,
            "monitor": self.monitor.state_dict() if self.monitor is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.schedule is not None and state.get("coefficients"):
            self.schedule.load_state_dict(state["coefficients"])
        if self.monitor is not None and state.get("monitor"):
            self.monitor.load_state_dict(state["monitor"])
