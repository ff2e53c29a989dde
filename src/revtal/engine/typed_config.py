"""Typed, immutable configuration from YAML: the generic machinery behind :mod:`revtal.engine.config` (which holds
revtal's schema).

A schema is a tree of frozen dataclasses. :func:`build_section` builds one from a plain mapping, checking every key
is a known field of the right type (a typo or a wrong type raises a :class:`ConfigError` naming the dotted key and
the source) and every number lies in its declared range (a ``ranges`` mapping of dotted keys to intervals such as
``"[0, 1)"``). :func:`settings_section` derives a section from another component's settings class or signature, so
that the config does not copy its fields; building such a section validates it by building the settings object once.
:func:`read_recipe` reads a YAML file and applies ``--set key=value`` overrides (values parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

Ranges = Mapping[str, str]


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


def freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: thaw(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


def settings_section(
    name: str,
    target: Callable,
    fields: list[tuple[str, Any, Any]],
    doc: str,
    build: Callable[[Any], Any],
    module: str,
    methods: Mapping[str, Callable] | None = None,
) -> type:
    """A frozen config section with ``fields`` ((name, type, default) each), whose ``build()`` returns ``target``'s
    object (and ``methods`` besides), defined in ``module`` (pickling finds it there). Loading validates the section
    by building it once, so a value ``target`` rejects fails at load."""
    section = dataclasses.make_dataclass(
        name,
        [(n, t, field(default=freeze(d))) for n, t, d in fields],
        frozen=True,
        namespace={"build": build, "__doc__": doc, "settings_class": target, **(methods or {})},
    )
    section.__module__ = module
    return section


def fields_of_dataclass(cls: type) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, hints[f.name], default))
    return out


def fields_of_signature(fn: Callable, exclude: set[str], prefix: str = "",
                         defaults: Mapping[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(fn)
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in exclude or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = (defaults or {}).get(p.name, p.default)
        out.append((prefix + p.name, hints[p.name], default))
    return out


def dataclass_section(name: str, cls: type, doc: str, module: str) -> type:
    """A section holding every field of the dataclass ``cls``; ``build()`` returns the ``cls`` instance."""
    names = [f.name for f in dataclasses.fields(cls)]

    def build(self):
        return cls(**{n: getattr(self, n) for n in names})

    return settings_section(name, cls, fields_of_dataclass(cls), doc, build, module)


def _check_type(value: Any, annotation: Any, key: str, source: str, ranges: Ranges) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, key, source, ranges)
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
        return build_section(annotation, value, key, source, ranges)
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
            return freeze(value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):  # fixed length: tuple[float, float]
            if len(value) != len(args):
                raise ConfigError(f"{source}: {key} must have {len(args)} entries, got {len(value)}: {value!r}")
            return tuple(_check_type(v, a, f"{key}[{i}]", source, ranges) for i, (v, a) in enumerate(zip(value, args)))
        return tuple(_check_type(v, args[0], f"{key}[{i}]", source, ranges) for i, v in enumerate(value))
    if annotation is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} must be a mapping, got {type(value).__name__} {value!r}")
        return freeze(value)
    if annotation in (bool, str) and not isinstance(value, annotation):
        raise ConfigError(f"{source}: {key} must be a {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


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


def _check_ranges(section: Any, prefix: str, source: str, ranges: Ranges) -> None:
    for f in dataclasses.fields(section):
        key = f"{prefix}.{f.name}" if prefix else f.name
        interval = ranges.get(key)
        if interval is None:
            continue
        value = getattr(section, f.name)
        values = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for index, v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not _in_interval(v, interval):
                where = key if index is None else f"{key}[{index}]"
                raise ConfigError(f"{source}: {where} must be {_describe_interval(interval)}, got {v!r}")


def build_section(cls: type, data: Mapping, prefix: str, source: str, ranges: Ranges = {}):
    """An instance of the dataclass ``cls`` from ``data`` (the section at dotted ``prefix``), every value checked."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{source}: unknown key {where!r} (known keys here: {', '.join(sorted(known))})")
    kwargs = {
        name: _check_type(value, hints[name], f"{prefix}.{name}" if prefix else name, source, ranges)
        for name, value in data.items()
    }
    section = cls(**kwargs)
    _check_ranges(section, prefix, source, ranges)
    if hasattr(section, "settings_class"):
        try:
            section.build()  # the settings class validates its values: fail now, naming the section
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{source}: {prefix}: {err}") from None
    return section


def set_dotted(data: dict, key: str, value: Any, source: str) -> None:
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {key}: {part!r} is not a section")
    node[parts[-1]] = value


def apply_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    set_dotted(data, key, yaml.safe_load(raw), f"--set {key}")


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
        apply_override(data, assignment)
    return data


def recipe_source(path: str | Path | None, overrides=()) -> str:
    return (str(path) if path else "<defaults>") + (" (with --set overrides)" if overrides else "")
