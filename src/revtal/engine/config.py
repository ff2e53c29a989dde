"""Training configuration: typed, immutable dataclasses, loaded from YAML and validated once.

Every key of a recipe must be a known field of the right type: a typo, a wrong type or a value a section rejects
raises a :class:`ConfigError` naming the dotted key and the file, at load time, instead of silently training
something else (or failing an hour in). ``--set a.b=c`` overrides parse their value as YAML (``--set
optim.head_lr=3e-4``, ``--set backbone.mode=re2``).

A loaded :class:`Config` is frozen: nothing changes it while a job runs, so the ``config.yaml`` a run saves is the
whole job (:meth:`Config.with_values` derives a changed copy, validated like a loaded one). Sections that configure
another component's settings class are derived from that class rather than copying its fields
(:func:`settings_section`): ``localizer.options`` is :class:`~revtal.localizers.actionformer.ActionFormerConfig`,
``localizer.postprocess`` :class:`~revtal.localizers.postprocess.PostprocessConfig`, ``backbone.losa``
:class:`~revtal.adapters.losa.LoSAConfig`, and ``backbone.schedule`` every argument of
:class:`~revtal.reversible.schedule.CoefficientSchedule` (plus those of its ``calibrate``, prefixed ``calibrate_``,
used by ``end: auto``).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from revtal.adapters.losa import LoSAConfig
from revtal.localizers.actionformer import ActionFormerConfig
from revtal.localizers.postprocess import PostprocessConfig
from revtal.reversible.schedule import CoefficientSchedule


class ConfigError(ValueError):
    pass


class FrozenDict(dict):
    """A read-only ``dict`` (free-form option mappings of an immutable config); picklable, YAML-dumpable via
    :meth:`Config.to_dict`."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("the config is immutable after loading: derive a changed copy with Config.with_values")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _readonly

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __deepcopy__(self, memo):
        return self  # immutable all the way down


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _thaw(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


# ------------------------------------------------------------------------------------- sections from other classes

def settings_section(
    name: str,
    target: Callable,
    fields: list[tuple[str, Any, Any]],
    doc: str,
    build: Callable[[Any], Any],
) -> type:
    """A frozen config section with ``fields`` ((name, type, default) each), whose ``build()`` returns ``target``'s
    object. Loading validates the section by building it once, so a value ``target`` rejects fails at load."""
    section = dataclasses.make_dataclass(
        name,
        [(n, t, field(default=_freeze(d))) for n, t, d in fields],
        frozen=True,
        namespace={"build": build, "__doc__": doc, "settings_class": target},
    )
    section.__module__ = __name__
    return section


def _fields_of_dataclass(cls: type) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, hints[f.name], default))
    return out


def _fields_of_signature(fn: Callable, exclude: set[str], prefix: str = "",
                         defaults: Mapping[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(fn)
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in exclude or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = (defaults or {}).get(p.name, p.default)
        out.append((prefix + p.name, hints[p.name], default))
    return out


def _dataclass_section(name: str, cls: type, doc: str) -> type:
    names = [f.name for f in dataclasses.fields(cls)]

    def build(self):
        return cls(**{n: getattr(self, n) for n in names})

    return settings_section(name, cls, _fields_of_dataclass(cls), doc, build)


LocalizerOptions = _dataclass_section("LocalizerOptions", ActionFormerConfig, "ActionFormerConfig fields.")
PostprocessOptions = _dataclass_section("PostprocessOptions", PostprocessConfig, "PostprocessConfig fields.")
LoSAOptions = _dataclass_section("LoSAOptions", LoSAConfig, "LoSAConfig fields (``backbone.mode: losa``).")

# the schedule's iteration count comes from the data loader, its calibration's model and input from the run
_SCHEDULE_RUNTIME = {"iters_per_epoch"}
_CALIBRATE_RUNTIME = {"model", "example_input", "loss_fn", "autocast_dtype"}
_SCHEDULE_FIELDS = _fields_of_signature(CoefficientSchedule.__init__, _SCHEDULE_RUNTIME, defaults={"end_epoch": 5.0})
_CALIBRATE_FIELDS = _fields_of_signature(CoefficientSchedule.calibrate, _CALIBRATE_RUNTIME, prefix="calibrate_")


def _build_schedule(self, iters_per_epoch: int = 1) -> CoefficientSchedule:
    return CoefficientSchedule(**{n: getattr(self, n) for n, _, _ in _SCHEDULE_FIELDS}, iters_per_epoch=iters_per_epoch)


ScheduleConfig = settings_section(
    "ScheduleConfig", CoefficientSchedule, _SCHEDULE_FIELDS + _CALIBRATE_FIELDS,
    "Dr²Net coefficient schedule: every CoefficientSchedule argument (see revtal.reversible.schedule), and the "
    "calibrate_* arguments of the end: auto search.", _build_schedule,
)


def calibrate_options(schedule: Any) -> dict[str, Any]:
    """The ``calibrate_*`` fields of a schedule section as keyword arguments of ``CoefficientSchedule.calibrate``."""
    return {n[len("calibrate_"):]: getattr(schedule, n) for n, _, _ in _CALIBRATE_FIELDS}


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
    mode: str = "frames"  # frames (whole video is one backbone input) | snippets
    num_frames: int = 32
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
    # float reversible modes: verify one stage's reconstruction every N steps (0: off) and fall back if it fails
    monitor_every: int = 50
    monitor_tolerance: float = 1e-3
    monitor_fallback: str = "exact"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # type: ignore[valid-type]
    losa: LoSAOptions = field(default_factory=LoSAOptions)  # type: ignore[valid-type]


@dataclass(frozen=True)
class LocalizerConfig:
    options: LocalizerOptions = field(default_factory=LocalizerOptions)  # type: ignore[valid-type]
    postprocess: PostprocessOptions = field(default_factory=PostprocessOptions)  # type: ignore[valid-type]


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
    ema: bool = False
    ema_decay: float = 0.999
    amp: str = "none"  # none | bf16 | fp16 (fp16 on CUDA only)


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
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, source: str = "<config>") -> "Config":
        from revtal.engine.modes import mode_names

        def bad(key: str, value: Any, allowed) -> ConfigError:
            return ConfigError(f"{source}: {key} must be one of {list(allowed)}, got {value!r}")

        if self.backbone.mode not in mode_names():
            raise bad("backbone.mode", self.backbone.mode, mode_names())
        if self.backbone.backprop not in ("exact", "reversible", "vanilla"):
            raise bad("backbone.backprop", self.backbone.backprop, ("exact", "reversible", "vanilla"))
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
        synthetic = self.data.synthetic
        if synthetic.max_duration < synthetic.min_duration:
            raise ConfigError(f"{source}: data.synthetic.max_duration ({synthetic.max_duration:g}) is below "
                              f"data.synthetic.min_duration ({synthetic.min_duration:g})")
        if self.backbone.backprop == "exact":  # exact arithmetic rounds β to p/2^k, k <= beta_bits
            smallest = 2.0 ** -(self.backbone.beta_bits + 1)  # and below this, to 0
            betas = {"hard": [("backbone.beta", self.backbone.beta)],
                     "dr2net": [("backbone.schedule.beta0", self.backbone.schedule.beta0),
                                ("backbone.schedule.beta_end", self.backbone.schedule.beta_end)]}
            for key, beta in betas.get(self.backbone.mode, []):
                if beta <= smallest:
                    raise ConfigError(f"{source}: {key}={beta:g} rounds to 0 with backbone.beta_bits="
                                      f"{self.backbone.beta_bits} (exact backprop); raise backbone.beta_bits")
        if self.optim.amp not in ("none", "bf16", "fp16"):
            raise bad("optim.amp", self.optim.amp, ("none", "bf16", "fp16"))
        for key in ("data.num_frames", "data.img_size", "data.batch_size", "optim.epochs", "optim.accumulate"):
            section, name = key.split(".")
            if getattr(getattr(self, section), name) <= 0:
                raise ConfigError(f"{source}: {key} must be positive, got {getattr(getattr(self, section), name)!r}")
        return self

    def to_dict(self) -> dict:
        """Plain dicts, lists and scalars (YAML, checkpoints); :func:`config_from_dict` reads it back equal."""
        return _thaw(self)

    def with_values(self, values: Mapping[str, Any], source: str = "<derived config>") -> "Config":
        """A copy with dotted keys set (``{"data.annotations": path}``), validated like a loaded config."""
        data = self.to_dict()
        for key, value in values.items():
            _set_dotted(data, key, _thaw(value), source)
        return config_from_dict(data, source)

    def with_overrides(self, assignments: list[str] | tuple[str, ...], source: str = "--set") -> "Config":
        """A copy with ``--set``-style ``key=value`` assignments applied (values parsed as YAML), validated."""
        data = self.to_dict()
        for assignment in assignments:
            _apply_override(data, assignment)
        return config_from_dict(data, source)


# ------------------------------------------------------------------------------------------------------ loading

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
        if not isinstance(value, Mapping):
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
    if origin in (tuple, list) or annotation in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(annotation)
        if not args:
            return _freeze(value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):  # fixed length: tuple[float, float]
            if len(value) != len(args):
                raise ConfigError(f"{source}: {key} must have {len(args)} entries, got {len(value)}: {value!r}")
            return tuple(_check_type(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        return tuple(_check_type(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
    if annotation is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} must be a mapping, got {type(value).__name__} {value!r}")
        return _freeze(value)
    if annotation in (bool, str) and not isinstance(value, annotation):
        raise ConfigError(f"{source}: {key} must be a {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


# Ranges of every numeric field with a meaning, checked at load (before a settings class sees the value, so the
# error names the dotted key and the file): "[a, b]" closed, "(a, b)" open, "inf" unbounded. Lists: each entry.
RANGES: dict[str, str] = {
    "data.num_frames": "[1, inf)", "data.img_size": "[1, inf)", "data.batch_size": "[1, inf)",
    "data.num_workers": "[0, inf)", "data.cache_mb": "[0, inf)", "data.std": "(0, inf)",
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
    "eval.tiou": "(0, 1]", "eval.every": "[1, inf)",
    "train.seed": "[0, 4294967295]", "train.log_every": "[1, inf)",
}


def _parse_interval(text: str) -> tuple[float, float, bool, bool]:
    low, high = (float(part) for part in text[1:-1].split(","))
    return low, high, text[0] == "[", text[-1] == "]"


def _describe_interval(text: str) -> str:
    low, high, closed_low, _ = _parse_interval(text)
    if high == float("inf"):
        return f"{'>=' if closed_low else '>'} {low:g}"
    return f"in {text}"


def _in_interval(value: float, text: str) -> bool:
    low, high, closed_low, closed_high = _parse_interval(text)
    above = value >= low if closed_low else value > low
    below = value <= high if closed_high else value < high
    return above and below  # false for nan


def _check_ranges(section: Any, prefix: str, source: str) -> None:
    for f in dataclasses.fields(section):
        key = f"{prefix}.{f.name}" if prefix else f.name
        interval = RANGES.get(key)
        if interval is None:
            continue
        value = getattr(section, f.name)
        values = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for index, v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not _in_interval(v, interval):
                where = key if index is None else f"{key}[{index}]"
                raise ConfigError(f"{source}: {where} must be {_describe_interval(interval)}, got {v!r}")


def _build(cls: type, data: Mapping, prefix: str, source: str):
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
    section = cls(**kwargs)
    _check_ranges(section, prefix, source)
    if hasattr(section, "settings_class"):
        try:
            section.build()  # the settings class validates its values: fail now, naming the section
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{source}: {prefix}: {err}") from None
    return section


def _set_dotted(data: dict, key: str, value: Any, source: str) -> None:
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {key}: {part!r} is not a section")
    node[parts[-1]] = value


def _apply_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    _set_dotted(data, key, yaml.safe_load(raw), f"--set {key}")


def read_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The raw values a recipe file and ``--set`` overrides set (nothing filled in, not validated): what
    :func:`load_config` builds a config from, and what a resumed run applies over its own config."""
    data: dict = {}
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{where}: {reason}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for assignment in overrides:
        _apply_override(data, assignment)
    return data


def recipe_source(path: str | Path | None, overrides=()) -> str:
    return (str(path) if path else "<defaults>") + (" (with --set overrides)" if overrides else "")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A recipe from YAML (or the defaults when ``path`` is None) with ``--set`` overrides, validated."""
    source = str(path) if path else "<defaults>"
    return _build(Config, read_recipe(path, overrides), "", recipe_source(path, overrides)).validate(source)


def config_from_dict(data: Mapping, source: str = "<dict>") -> Config:
    return _build(Config, data, "", source).validate(source)


def dump_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
