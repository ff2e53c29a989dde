"""Training configuration: typed dataclasses, loaded from YAML and validated.

Every key of a recipe must be a known field of the right type: a typo or a wrong type raises a :class:`ConfigError`
naming the dotted key and the file, instead of silently training something else. ``--set a.b=c`` overrides parse
their value as YAML (``--set optim.head_lr=3e-4``, ``--set backbone.mode=re2``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BACKBONE_MODES = ("frozen", "conventional", "checkpoint", "re2", "hard", "dr2net", "scratch", "losa")


class ConfigError(ValueError):
    pass


@dataclass
class SyntheticConfig:
    """The embedded default dataset, generated on first use when ``data.annotations`` is empty."""

    videos: int = 48
    classes: int = 4
    seed: int = 0
    size: int = 32
    fps: float = 4.0
    min_duration: float = 16.0
    max_duration: float = 32.0


@dataclass
class DataConfig:
    annotations: str = ""  # ActivityNet-format JSON; empty → synthetic dataset under <out>/data
    video_dir: str = ""
    features_dir: str = ""  # precomputed features (revtal extract): train the localizer on them (mode frozen)
    train_subset: str = "train"
    val_subset: str = "validation"
    mode: str = "frames"  # frames (whole video is one backbone input) | snippets
    num_frames: int = 32
    img_size: int = 32
    batch_size: int = 2
    num_workers: int = 0
    skip_bad_videos: bool = False
    cache_mb: float = 0.0  # keep decoded frames in memory up to this many MiB per process (small datasets)
    # training crops (revtal.data.crop): a random [low, high] fraction of each sequence; null: ActionFormer's THUMOS
    # [0.9, 1.0] on features_dir, none on videos (whose frames are one backbone input); [1, 1] turns it off
    crop_ratio: list | None = None
    max_seq_len: int | None = None  # training sequences longer than this are cut to it; items padded to it
    trunc_thresh: float = 0.5  # a cropped action keeping less of its length is dropped from the item
    mean: list = field(default_factory=lambda: [0.45, 0.45, 0.45])
    std: list = field(default_factory=lambda: [0.225, 0.225, 0.225])
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ScheduleConfig:
    """Dr²Net coefficient schedule (see revtal.reversible.schedule)."""

    alpha0: float = 1.0
    alpha_end: float = 0.3
    beta0: float = 0.1
    beta_end: float = 0.7
    policy: str = "linear"
    order: str = "simultaneous"
    every: int = 1
    unit: str = "epoch"
    end_epoch: float = 5.0


@dataclass
class BackboneConfig:
    name: str = "vit_tiny_video"
    pretrained: str = ""  # local checkpoint path of the backbone network
    options: dict = field(default_factory=dict)  # extra keyword arguments of revtal.backbones.build
    mode: str = "dr2net"
    backprop: str = "exact"  # memory-free arithmetic of reversible modes: exact | reversible
    alpha: float = 0.3  # fixed coefficients of `hard` mode
    beta: float = 0.7
    beta_bits: int = 8
    # float reversible modes: verify one stage's reconstruction every N steps (0: off) and fall back if it fails
    monitor_every: int = 50
    monitor_tolerance: float = 1e-3
    monitor_fallback: str = "exact"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    losa: dict = field(default_factory=dict)  # LoSAConfig fields for `losa` mode


@dataclass
class LocalizerConfig:
    options: dict = field(default_factory=dict)  # ActionFormerConfig fields
    postprocess: dict = field(default_factory=dict)  # PostprocessConfig fields


@dataclass
class OptimConfig:
    epochs: int = 10
    backbone_lr: float = 1e-5
    head_lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    clip_grad: float = 1.0
    accumulate: int = 1
    ema: bool = False
    ema_decay: float = 0.999
    amp: str = "none"  # none | bf16 | fp16 (fp16 on CUDA only)


@dataclass
class EvalConfig:
    tiou: list = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7])
    every: int = 1  # evaluate every N epochs (and always after the last)


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10
    deterministic: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, source: str = "<config>") -> "Config":
        def bad(key: str, value: Any, allowed) -> ConfigError:
            return ConfigError(f"{source}: {key} must be one of {list(allowed)}, got {value!r}")

        if self.backbone.mode not in BACKBONE_MODES:
            raise bad("backbone.mode", self.backbone.mode, BACKBONE_MODES)
        if self.backbone.backprop not in ("exact", "reversible"):
            raise bad("backbone.backprop", self.backbone.backprop, ("exact", "reversible"))
        if self.backbone.monitor_fallback not in ("exact", "vanilla"):
            raise bad("backbone.monitor_fallback", self.backbone.monitor_fallback, ("exact", "vanilla"))
        if self.data.features_dir and self.backbone.mode != "frozen":
            raise ConfigError(
                f"{source}: data.features_dir trains on precomputed features, which needs backbone.mode: frozen "
                f"(got {self.backbone.mode!r})"
            )
        if self.data.mode not in ("frames", "snippets"):
            raise bad("data.mode", self.data.mode, ("frames", "snippets"))
        ratio = self.data.crop_ratio
        if ratio is not None and (len(ratio) != 2 or not all(isinstance(r, (int, float)) for r in ratio)
                                  or not 0 < ratio[0] <= ratio[1] <= 1):
            raise ConfigError(f"{source}: data.crop_ratio must be [low, high] with 0 < low <= high <= 1, got {ratio!r}")
        if self.data.max_seq_len is not None and self.data.max_seq_len <= 0:
            raise ConfigError(f"{source}: data.max_seq_len must be positive or null, got {self.data.max_seq_len!r}")
        if not 0 <= self.data.trunc_thresh <= 1:
            raise ConfigError(f"{source}: data.trunc_thresh must be in [0, 1], got {self.data.trunc_thresh!r}")
        if self.optim.amp not in ("none", "bf16", "fp16"):
            raise bad("optim.amp", self.optim.amp, ("none", "bf16", "fp16"))
        for key in ("data.num_frames", "data.img_size", "data.batch_size", "optim.epochs", "optim.accumulate"):
            section, name = key.split(".")
            if getattr(getattr(self, section), name) <= 0:
                raise ConfigError(f"{source}: {key} must be positive, got {getattr(getattr(self, section), name)!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(value: Any, annotation: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, key, source)
            except ConfigError as err:
                errors.append(err)
        raise errors[-1]
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: {key} must be null, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {type(value).__name__} {value!r}")
        return _build(annotation, value, key, source)
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; accept any literal Python reads as a float
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    expected = {bool: bool, str: str, dict: dict, list: list}.get(annotation if origin is None else origin)
    if expected is not None and not isinstance(value, expected):
        raise ConfigError(f"{source}: {key} must be a {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{source}: unknown key {where!r} (known keys here: {', '.join(sorted(known))})")
    kwargs = {
        name: _check_type(value, hints[name], f"{prefix}.{name}" if prefix else name, source)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _apply_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A recipe from YAML (or the defaults when ``path`` is None) with ``--set`` overrides, validated."""
    source = str(path) if path else "<defaults>"
    data: dict = {}
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for assignment in overrides:
        _apply_override(data, assignment)
    return _build(Config, data, "", source + (" (with --set overrides)" if overrides else "")).validate(source)


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    return _build(Config, data, "", source).validate(source)


def dump_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
