"""The localizers a recipe can name (``localizer.name``), each with its typed settings class.

Every localizer takes ``(in_channels, num_classes, config)``, maps features ``(B, C, T)`` and a bool mask ``(B, T)``
to its raw output, and offers ``loss(output, segments, labels)`` (a dict with ``total``) and ``predict(output,
postprocess_config)`` (per video ``segments`` in grid units, ``scores``, ``labels``), so one trainer, one
post-processing and one evaluation serve all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from revtal.localizers.actionformer import ActionFormer, ActionFormerConfig
from revtal.localizers.vsgn import VSGN, VSGNConfig


@dataclass(frozen=True)
class LocalizerSpec:
    name: str
    model: type[nn.Module]
    settings: type  # the dataclass of its options (``localizer.options``)
    summary: str


_LOCALIZERS: dict[str, LocalizerSpec] = {}


def register_localizer(spec: LocalizerSpec) -> LocalizerSpec:
    if spec.name in _LOCALIZERS:
        raise ValueError(f"a localizer named {spec.name!r} is already registered")
    _LOCALIZERS[spec.name] = spec
    return spec


def localizer_names() -> list[str]:
    return list(_LOCALIZERS)


def get_localizer(name: str) -> LocalizerSpec:
    try:
        return _LOCALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown localizer {name!r}; known: {', '.join(_LOCALIZERS)}") from None


def build_localizer(name: str, in_channels: int, num_classes: int, settings=None) -> nn.Module:
    """The localizer ``name`` with ``settings`` (its settings dataclass; None: its defaults)."""
    spec = get_localizer(name)
    if settings is not None and not isinstance(settings, spec.settings):
        raise TypeError(f"localizer {name!r} takes {spec.settings.__name__} settings, got {type(settings).__name__}")
    return spec.model(in_channels, num_classes, settings)


register_localizer(LocalizerSpec("actionformer", ActionFormer, ActionFormerConfig,
                                 "anchor-free transformer pyramid (Zhang, Wu & Li, ECCV 2022)"))
register_localizer(LocalizerSpec("vsgn", VSGN, VSGNConfig,
                                 "video self-stitching + cross-scale graph pyramid, anchors (Zhao et al., ICCV 2021)"))
