"""Training configuration: typed, immutable dataclasses, loaded from YAML and validated once.

Every key of a recipe must be a known field of the right type: a typo, a wrong type or a value a section rejects
raises a :class:`ConfigError` naming the dotted key and the file, at load time, instead of silently training
something else (or failing an hour in). ``--set a.b=c`` overrides parse their value as YAML (``--set
optim.head_lr=3e-4``, ``--set backbone.mode=re2``).

A loaded :class:`Config` is frozen: nothing changes it while a job runs, so the ``config.yaml`` a run saves is the
whole job (:meth:`Config.with_values` derives a changed copy, validated like a loaded one). Sections that configure
another component's settings class are derived from that class rather than copying its fields
(:func:`~revtal.engine.typed_config.settings_section`): ``localizer.options`` is the settings class of the localizer
``localizer.name`` names (:class:`~revtal.localizers.actionformer.ActionFormerConfig`,
:class:`~revtal.localizers.vsgn.VSGNConfig`; :mod:`revtal.localizers.registry`),
``localizer.postprocess`` :class:`~revtal.localizers.postprocess.PostprocessConfig`, ``backbone.losa``
:class:`~revtal.adapters.losa.LoSAConfig`, and ``backbone.schedule`` every argument of
:class:`~revtal.reversible.schedule.CoefficientSchedule` (plus those of its ``calibrate``, prefixed ``calibrate_``,
used by ``end: auto``). What a training mode requires of the rest of the config is checked by the mode
(:meth:`revtal.engine.modes.TrainingMode.validate`). The generic machinery (type checks, ranges, YAML, ``--set``) is
:mod:`revtal.engine.typed_config`; this module is revtal's schema.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from revtal.adapters.aim import AIMConfig
from revtal.adapters.losa import LoSAConfig
from revtal.adapters.st_adapter import STAdapterConfig
from revtal.adapters.unipt import UniPTConfig
from revtal.backbones.builder import backbone_options
from revtal.engine.modes import get_mode, mode_names
from revtal.engine.typed_config import (ConfigError, FrozenDict, apply_override, build_section, check_option,
                                        dataclass_section, fields_of_signature, recipe_source, set_dotted,
                                        settings_section, thaw)
from revtal.engine.typed_config import read_recipe as read_yaml_recipe
from revtal.localizers.postprocess import PostprocessConfig
from revtal.localizers.registry import get_localizer, localizer_names
from revtal.reversible.schedule import CoefficientSchedule
from revtal.utils.io import write_text_atomic

__all__ = ["Config", "ConfigError", "config_from_dict", "dump_config", "load_config", "read_recipe", "recipe_source"]


# ------------------------------------------------------------------------------------- sections from other classes

# one options section per registered localizer: ``localizer.options`` takes the fields of the named one's settings
LOCALIZER_OPTIONS: dict[str, type] = {
    name: dataclass_section("LocalizerOptions" if name == "actionformer"
                            else f"{get_localizer(name).settings.__name__.removesuffix('Config')}Options",
                            get_localizer(name).settings,
                            f"{get_localizer(name).settings.__name__} fields (``localizer.name: {name}``).", __name__)
    for name in localizer_names()
}
LocalizerOptions = LOCALIZER_OPTIONS["actionformer"]  # the default localizer's section
PostprocessOptions = dataclass_section("PostprocessOptions", PostprocessConfig, "PostprocessConfig fields.", __name__)
LoSAOptions = dataclass_section("LoSAOptions", LoSAConfig, "LoSAConfig fields (``backbone.mode: losa``).", __name__)
STAdapterOptions = dataclass_section("STAdapterOptions", STAdapterConfig,
                                     "STAdapterConfig fields (``backbone.mode: st_adapter``).", __name__)
AIMOptions = dataclass_section("AIMOptions", AIMConfig, "AIMConfig fields (``backbone.mode: aim``).", __name__)
UniPTOptions = dataclass_section("UniPTOptions", UniPTConfig, "UniPTConfig fields (``backbone.mode: unipt``).",
                                 __name__)

# the schedule's iteration count comes from the data loader, its calibration's model and input from the run
_SCHEDULE_RUNTIME = {"iters_per_epoch"}
_CALIBRATE_RUNTIME = {"model", "example_input", "loss_fn", "autocast_dtype"}
_SCHEDULE_FIELDS = fields_of_signature(CoefficientSchedule.__init__, _SCHEDULE_RUNTIME, defaults={"end_epoch": 5.0})
_CALIBRATE_FIELDS = fields_of_signature(CoefficientSchedule.calibrate, _CALIBRATE_RUNTIME, prefix="calibrate_")


def _build_schedule(self, iters_per_epoch: int = 1) -> CoefficientSchedule:
    return CoefficientSchedule(**{n: getattr(self, n) for n, _, _ in _SCHEDULE_FIELDS}, iters_per_epoch=iters_per_epoch)


def _calibrate_options(self) -> dict[str, Any]:
    """The ``calibrate_*`` fields as keyword arguments of ``CoefficientSchedule.calibrate`` (``end: auto``)."""
    return {n[len("calibrate_"):]: getattr(self, n) for n, _, _ in _CALIBRATE_FIELDS}


ScheduleConfig = settings_section(
    "ScheduleConfig", CoefficientSchedule, _SCHEDULE_FIELDS + _CALIBRATE_FIELDS,
    "Dr²Net coefficient schedule: every CoefficientSchedule argument (see revtal.reversible.schedule), and the "
    "calibrate_* arguments of the end: auto search (``calibrate_options()``).", _build_schedule, __name__,
    methods={"calibrate_options": _calibrate_options},
)


# ----------------------------------------------------------------------------------------------- own sections

@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded default dataset, generated on first use when ``data.annotations`` is empty."""

    videos: int = 48
    classes: int = 4
    seed: int = 0
    size: int = 32
    fps: float = 4.0
    min_duration: float = 16.0
    max_duration: float = 32.0
    val_fraction: float = 0.25  # share of the videos in the validation subset


@dataclass(frozen=True)
class DataConfig:
    annotations: str = ""  # ActivityNet-format JSON; empty → synthetic dataset under <out>/data
    video_dir: str = ""
    features_dir: str = ""  # precomputed features (revtal extract): train the localizer on them (mode frozen)
    train_subset: str = "train"
    val_subset: str = "validation"
    mode: str = "frames"  # frames (whole video is one backbone input) | snippets (clips, one backbone input each)
    num_frames: int = 32
    # snippets mode: the sequence is clips of clip_frames frames starting every clip_stride frames of an fps
    # re-sampling (null: the annotation's fps, then the file's); the backbone runs clip by clip
    clip_frames: int = 16
    clip_stride: int = 16
    fps: float | None = None
    img_size: int = 32
    batch_size: int = 2
    num_workers: int = 0
    skip_bad_videos: bool = False
    cache_mb: float = 0.0  # keep decoded frames in memory up to this many MiB per process (small datasets)
    # training crops (revtal.data.crop): a random [low, high] fraction of each sequence; null: ActionFormer's THUMOS
    # [0.9, 1.0] on features_dir, none on videos (whose frames are one backbone input); [1, 1] turns it off
    crop_ratio: tuple[float, float] | None = None
    max_seq_len: int | None = None  # training sequences longer than this are cut to it; items padded to it
    trunc_thresh: float = 0.5  # a cropped action keeping less of its length is dropped from the item
    mean: tuple[float, ...] = (0.45, 0.45, 0.45)
    std: tuple[float, ...] = (0.225, 0.225, 0.225)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class SyntheticClipsConfig:
    """The embedded trimmed-clip dataset (``task: classification`` without ``classification.train_list``): clips of
    the synthetic actions, written under ``<out>/data`` on first use (:func:`revtal.data.synthetic.
    generate_clip_dataset`)."""

    classes: int = 4
    train_per_class: int = 24
    val_per_class: int = 8
    seed: int = 0
    size: int = 32
    fps: float = 4.0
    min_duration: float = 4.0
    max_duration: float = 8.0


@dataclass(frozen=True)
class ClassificationConfig:
    """``task: classification``: trimmed clips (revtal.data.cliplists / revtal.data.clips) and the parts of
    VideoMAE's finetuning recipe that the optimiser lacks. ``data.num_frames`` frames of ``data.img_size``² make a
    clip; ``data.batch_size``, ``num_workers``, ``skip_bad_videos``, ``cache_mb``, ``mean`` and ``std`` apply."""

    train_list: str = ""  # clip list, SSv2 JSON or class folder; empty: the synthetic clips
    val_list: str = ""
    root: str = ""  # prefix of relative paths in the lists (default: each list's folder)
    classes: str = ""  # class names: a file (one per line, name,id, id name, or JSON), default: from the lists
    format: str = "auto"  # auto | list | csv | ssv2 | folders
    sampling: str = "uniform"  # uniform (TSN segments, SSv2) | dense (frame_interval apart, Kinetics)
    frame_interval: int = 4
    test_clips: int = 1  # evaluation views: clips x crops per video (VideoMAE: 2 x 3 on SSv2, 5 x 3 on Kinetics)
    test_crops: int = 1
    train_scale: tuple[float, float] = (0.25, 1.0)  # random resized crop: area fraction kept
    mixup_alpha: float = 0.0  # VideoMAE: 0.8
    cutmix_alpha: float = 0.0  # VideoMAE: 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.0  # VideoMAE: 0.1
    head_dropout: float = 0.0
    synthetic: SyntheticClipsConfig = field(default_factory=SyntheticClipsConfig)


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "vit_tiny_video"
    pretrained: str = ""  # local checkpoint path of the backbone network
    # read a pretrained file that needs full unpickling (a pickled model, unknown classes): it can run code, so only
    # for files from a trusted source (--trust-checkpoint)
    trust_checkpoint: bool = False
    options: dict = field(default_factory=FrozenDict)  # extra keyword arguments of revtal.backbones.build
    mode: str = "dr2net"  # a registered training mode (revtal.engine.modes)
    # how reversible modes backpropagate: exact | reversible (float), both memory-free, or vanilla (plain autograd
    # through the same coupling: stores activations; the reference the memory-free arithmetic is compared with)
    backprop: str = "exact"
    alpha: float = 0.3  # fixed coefficients of `hard` mode
    beta: float = 0.7
    beta_bits: int = 8
    # Video Swin: compute window attention this many windows at a time, and the MLP as many windows' tokens at a
    # time (one chunk's attention matrices and MLP activations in memory, not all of them; revtal.reversible.
    # video_swin); null: the library's attention and MLP. Every mode (conventional: chunks without recompute).
    window_chunk: int | None = None
    # float reversible modes: verify one stage's reconstruction every N steps (0: off) and fall back if it fails
    monitor_every: int = 50
    monitor_tolerance: float = 1e-3
    monitor_fallback: str = "exact"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # type: ignore[valid-type]
    losa: LoSAOptions = field(default_factory=LoSAOptions)  # type: ignore[valid-type]
    # LoSA Tab. 2's baselines
    st_adapter: STAdapterOptions = field(default_factory=STAdapterOptions)  # type: ignore[valid-type]
    aim: AIMOptions = field(default_factory=AIMOptions)  # type: ignore[valid-type]
    unipt: UniPTOptions = field(default_factory=UniPTOptions)  # type: ignore[valid-type]


@dataclass(frozen=True)
class LocalizerConfig:
    name: str = "actionformer"  # a registered localizer (revtal.localizers.registry): actionformer | vsgn
    # the named localizer's settings: read as a mapping, typed against that localizer's section by Config.validate
    options: Any = field(default_factory=LocalizerOptions)
    postprocess: PostprocessOptions = field(default_factory=PostprocessOptions)  # type: ignore[valid-type]

    def resolved(self, source: str) -> "LocalizerConfig":
        """This section with ``options`` typed for ``name``; an option the localizer does not take is an error
        naming it. Options left at another localizer's defaults (no ``options`` given) become ``name``'s defaults."""
        if self.name not in LOCALIZER_OPTIONS:
            raise ConfigError(f"{source}: localizer.name must be one of {localizer_names()}, got {self.name!r}")
        section = LOCALIZER_OPTIONS[self.name]
        options = self.options
        if isinstance(options, section):
            return self
        if isinstance(options, Mapping):
            known = [f.name for f in dataclasses.fields(section)]
            for key in options:
                if key not in known:
                    raise ConfigError(f"{source}: unknown key 'localizer.options.{key}': localizer {self.name!r} takes "
                                      f"no option {key!r} (its options: {', '.join(known)})")
            return replace(self, options=build_section(section, options, "localizer.options", source, RANGES))
        if dataclasses.is_dataclass(options) and options == type(options)():
            return replace(self, options=section())
        raise ConfigError(f"{source}: localizer.options were set for another localizer than localizer.name="
                          f"{self.name!r}; give that localizer's options as a mapping")


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 10
    backbone_lr: float = 1e-5
    head_lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    clip_grad: float = 1.0
    accumulate: int = 1
    # layer-wise learning-rate decay of the backbone (VideoMAE: 0.75): block i of n trains at backbone_lr x
    # layer_decay^(n + 1 - i), the embeddings at layer_decay^(n + 1); 1 turns it off
    layer_decay: float = 1.0
    ema: bool = False
    ema_decay: float = 0.999
    amp: str = "none"  # none | bf16 | fp16 (fp16 on CUDA only)
    fused: bool = False  # fused AdamW: in-place update per parameter, no temporary the size of all parameters


@dataclass(frozen=True)
class EvalConfig:
    tiou: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    every: int = 1  # evaluate every N epochs (and always after the last)


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10
    deterministic: bool = False


@dataclass(frozen=True)
class Config:
    task: str = "tal"  # tal | classification
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)

    def validate(self, source: str = "<config>") -> "Config":
        """Checks across sections; returns the config with ``localizer.options`` typed for ``localizer.name``."""
        localizer = self.localizer.resolved(source)
        if localizer is not self.localizer:
            return replace(self, localizer=localizer).validate(source)
        def bad(key: str, value: Any, allowed) -> ConfigError:
            return ConfigError(f"{source}: {key} must be one of {list(allowed)}, got {value!r}")

        if self.task not in TASKS:
            raise bad("task", self.task, TASKS)
        if self.backbone.mode not in mode_names():
            raise bad("backbone.mode", self.backbone.mode, mode_names())
        self._check_task_keys(source)
        if self.backbone.backprop not in ("exact", "reversible", "vanilla"):
            raise bad("backbone.backprop", self.backbone.backprop, ("exact", "reversible", "vanilla"))
        if self.backbone.monitor_fallback not in ("exact", "vanilla"):
            raise bad("backbone.monitor_fallback", self.backbone.monitor_fallback, ("exact", "vanilla"))
        get_mode(self.backbone.mode).validate(self, source)  # what the training mode itself requires
        _check_backbone_options(self.backbone, source)
        if self.data.mode not in ("frames", "snippets"):
            raise bad("data.mode", self.data.mode, ("frames", "snippets"))
        ratio = self.data.crop_ratio
        if ratio is not None and (len(ratio) != 2 or not all(isinstance(r, (int, float)) for r in ratio)
                                  or not 0 < ratio[0] <= ratio[1] <= 1):
            raise ConfigError(f"{source}: data.crop_ratio must be [low, high] with 0 < low <= high <= 1, got {ratio!r}")
        if self.backbone.window_chunk is not None and not (
                isinstance(self.backbone.window_chunk, int) and self.backbone.window_chunk > 0):
            raise ConfigError(f"{source}: backbone.window_chunk must be a positive number of windows or null, got "
                              f"{self.backbone.window_chunk!r}")
        if self.data.fps is not None and not self.data.fps > 0:
            raise ConfigError(f"{source}: data.fps must be positive or null, got {self.data.fps!r}")
        if self.data.max_seq_len is not None and self.data.max_seq_len <= 0:
            raise ConfigError(f"{source}: data.max_seq_len must be positive or null, got {self.data.max_seq_len!r}")
        if not 0 <= self.data.trunc_thresh <= 1:
            raise ConfigError(f"{source}: data.trunc_thresh must be in [0, 1], got {self.data.trunc_thresh!r}")
        synthetic = self.data.synthetic
        if synthetic.max_duration < synthetic.min_duration:
            raise ConfigError(f"{source}: data.synthetic.max_duration ({synthetic.max_duration:g}) is below "
                              f"data.synthetic.min_duration ({synthetic.min_duration:g})")
        if self.optim.amp not in ("none", "bf16", "fp16"):
            raise bad("optim.amp", self.optim.amp, ("none", "bf16", "fp16"))
        for key in ("data.num_frames", "data.img_size", "data.batch_size", "optim.epochs", "optim.accumulate"):
            section, name = key.split(".")
            if getattr(getattr(self, section), name) <= 0:
                raise ConfigError(f"{source}: {key} must be positive, got {getattr(getattr(self, section), name)!r}")
        return self

    def _check_task_keys(self, source: str) -> None:
        """An option the task does not take is an error (it would be silently ignored otherwise)."""
        defaults = Config()
        if self.task == "tal":
            if self.classification != defaults.classification:
                changed = _changed_keys(self.classification, defaults.classification, "classification")
                raise ConfigError(f"{source}: {changed[0]} is a classification option, but task is 'tal' "
                                  "(set task: classification)")
            return
        changed = [key for key in _changed_keys(self.data, defaults.data, "data")
                   if ".".join(key.split(".")[:2]) in TAL_ONLY_KEYS]
        changed += _changed_keys(self.localizer, defaults.localizer, "localizer")
        changed += [key for key in _changed_keys(self.eval, defaults.eval, "eval") if key == "eval.tiou"]
        if changed:
            raise ConfigError(f"{source}: {changed[0]} is a TAL option, which task: classification does not take "
                              "(its data are under classification.*)")
        c = self.classification
        if c.sampling not in ("uniform", "dense"):
            raise ConfigError(f"{source}: classification.sampling must be one of ['uniform', 'dense'], got {c.sampling!r}")
        if c.format not in ("auto", "list", "csv", "ssv2", "folders"):
            raise ConfigError(f"{source}: classification.format must be one of ['auto', 'list', 'csv', 'ssv2', "
                              f"'folders'], got {c.format!r}")
        if c.test_crops not in (1, 3):
            raise ConfigError(f"{source}: classification.test_crops must be 1 or 3, got {c.test_crops!r}")
        if bool(c.train_list) != bool(c.val_list):
            raise ConfigError(f"{source}: set both classification.train_list and classification.val_list "
                              "(or neither, for the synthetic clips)")

    def to_dict(self) -> dict:
        """Plain dicts, lists and scalars (YAML, checkpoints); :func:`config_from_dict` reads it back equal."""
        return thaw(self)

    def with_values(self, values: Mapping[str, Any], source: str = "<derived config>") -> "Config":
        """A copy with dotted keys set (``{"data.annotations": path}``), validated like a loaded config."""
        data = self.to_dict()
        for key, value in values.items():
            set_dotted(data, key, thaw(value), source)
        return config_from_dict(data, source)

    def with_overrides(self, assignments: list[str] | tuple[str, ...], source: str = "--set") -> "Config":
        """A copy with ``--set``-style ``key=value`` assignments applied (values parsed as YAML), validated."""
        data = self.to_dict()
        for assignment in assignments:
            apply_override(data, assignment)
        return config_from_dict(data, source)


def _check_backbone_options(backbone: BackboneConfig, source: str) -> None:
    """``backbone.options`` against the options the named backbone declares (names and scalar types), at load."""
    try:
        accepted = backbone_options(backbone.name)
    except ValueError as err:
        raise ConfigError(f"{source}: backbone.name: {err}") from None
    if accepted is None:
        return
    for key, value in backbone.options.items():
        if key not in accepted:
            raise ConfigError(f"{source}: unknown key 'backbone.options.{key}' for backbone {backbone.name} (its "
                              f"options: {', '.join(sorted(accepted))})")
        check_option(value, accepted[key].annotation, f"backbone.options.{key}", source)


TASKS = ("tal", "classification")
# data fields that only TAL reads (classification reads its clips from the classification section)
TAL_ONLY_KEYS = {f"data.{name}" for name in ("annotations", "video_dir", "features_dir", "train_subset", "val_subset",
                                             "mode", "crop_ratio", "max_seq_len", "trunc_thresh", "synthetic")}


def _changed_keys(section: Any, default: Any, prefix: str) -> list[str]:
    """Dotted keys of ``section`` that differ from ``default`` (recursing into sub-sections)."""
    keys = []
    for f in dataclasses.fields(section):
        value, base = getattr(section, f.name), getattr(default, f.name)
        if value == base:
            continue
        if dataclasses.is_dataclass(value):
            keys += _changed_keys(value, base, f"{prefix}.{f.name}") or [f"{prefix}.{f.name}"]
        else:
            keys.append(f"{prefix}.{f.name}")
    return keys


# ------------------------------------------------------------------------------------------------------ loading

# Ranges of every numeric field with a meaning, checked at load (before a settings class sees the value, so the
# error names the dotted key and the file): "[a, b]" closed, "(a, b)" open, "inf" unbounded. Lists: each entry.
RANGES: dict[str, str] = {
    "data.num_frames": "[1, inf)", "data.img_size": "[1, inf)", "data.batch_size": "[1, inf)",
    "data.num_workers": "[0, inf)", "data.clip_frames": "[1, inf)", "data.clip_stride": "[1, inf)", "data.cache_mb": "[0, inf)", "data.std": "(0, inf)",
    "data.synthetic.videos": "[1, inf)", "data.synthetic.classes": "[1, inf)", "data.synthetic.seed": "[0, inf)",
    "data.synthetic.size": "[1, inf)", "data.synthetic.fps": "(0, inf)", "data.synthetic.min_duration": "(0, inf)",
    "data.synthetic.max_duration": "(0, inf)", "data.synthetic.val_fraction": "(0, 1)",
    "backbone.alpha": "[0, 1]", "backbone.beta": "(0, 1]", "backbone.beta_bits": "[0, 30]",
    "backbone.monitor_every": "[0, inf)", "backbone.monitor_tolerance": "(0, inf)",
    "backbone.schedule.alpha0": "[0, 1]", "backbone.schedule.alpha_end": "[0, 1]",
    "backbone.schedule.beta0": "(0, 1]", "backbone.schedule.beta_end": "(0, 1]",
    "backbone.schedule.every": "[1, inf)", "backbone.schedule.end_epoch": "(0, inf)",
    "backbone.schedule.curvature": "(0, inf)", "backbone.schedule.tolerance": "(0, inf)",
    "optim.epochs": "[1, inf)", "optim.backbone_lr": "[0, inf)", "optim.head_lr": "[0, inf)",
    "optim.weight_decay": "[0, inf)", "optim.warmup_epochs": "[0, inf)", "optim.min_lr_ratio": "[0, 1]",
    "optim.clip_grad": "[0, inf)", "optim.accumulate": "[1, inf)", "optim.ema_decay": "[0, 1)",
    "eval.tiou": "(0, 1]", "eval.every": "[1, inf)", "optim.layer_decay": "(0, 1]",
    "classification.frame_interval": "[1, inf)", "classification.test_clips": "[1, inf)",
    "classification.train_scale": "(0, 1]", "classification.mixup_alpha": "[0, inf)",
    "classification.cutmix_alpha": "[0, inf)", "classification.mixup_prob": "[0, 1]",
    "classification.mixup_switch_prob": "[0, 1]", "classification.label_smoothing": "[0, 1)",
    "classification.head_dropout": "[0, 1)", "classification.synthetic.classes": "[1, 20]",
    "classification.synthetic.train_per_class": "[1, inf)", "classification.synthetic.val_per_class": "[1, inf)",
    "classification.synthetic.size": "[2, inf)", "classification.synthetic.fps": "(0, inf)",
    "classification.synthetic.min_duration": "(0, inf)", "classification.synthetic.max_duration": "(0, inf)",
    "train.seed": "[0, 4294967295]", "train.log_every": "[1, inf)",
}


# keys naming input files or folders. A relative value is read from the folder of the config file that holds it (one
# given with --set, from the working directory) and kept absolute: a run's config.yaml and checkpoints then name
# the same files from any working directory, and a recipe works wherever it is run from.
PATH_KEYS = ("data.annotations", "data.video_dir", "data.features_dir", "backbone.pretrained",
             "backbone.options.image_checkpoint", "classification.train_list", "classification.val_list",
             "classification.root", "classification.classes")


def read_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The values a recipe file and ``--set`` overrides set (:func:`revtal.engine.typed_config.read_recipe`), with
    the relative paths of :data:`PATH_KEYS` made absolute: against the file's folder, or for overrides the working
    directory."""
    data = read_yaml_recipe(path)
    if path:
        anchor_paths(data, Path(path).parent)
    for assignment in overrides:
        apply_override(data, assignment)
    anchor_paths(data, Path.cwd())
    return data


def anchor_paths(data: dict, base: Path) -> None:
    """Make the relative values of :data:`PATH_KEYS` in the raw ``data`` absolute against ``base`` (in place)."""
    for key in PATH_KEYS:
        *sections, name = key.split(".")
        node: Any = data
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        value = node.get(name) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            node[name] = os.path.abspath(base / value)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A recipe from YAML (or the defaults when ``path`` is None) with ``--set`` overrides, validated."""
    source = str(path) if path else "<defaults>"
    return build_section(Config, read_recipe(path, overrides), "", recipe_source(path, overrides), RANGES).validate(source)


def config_from_dict(data: Mapping, source: str = "<dict>") -> Config:
    return build_section(Config, data, "", source, RANGES).validate(source)


def dump_config(config: Config, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
