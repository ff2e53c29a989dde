"""Loading local checkpoints into backbones, with errors that say exactly what did not fit.

Checkpoints come in many wrappings: a bare state dict, ``{"model": ...}``, ``{"state_dict": ...}``, keys prefixed
by ``module.`` (DDP), ``backbone.`` (a detector or localizer), ``net.`` (a revtal :class:`VideoBackbone`) or
``encoder.`` (a VideoMAE pretraining checkpoint, whose decoder we do not need). :func:`read_state_dict` unwraps the
file; :func:`select_prefixed` keeps one sub-network; :func:`load_checked` compares the keys and shapes with the
module and either loads or raises :class:`CheckpointMismatchError` listing missing keys, unexpected keys and shape
mismatches. Nothing is ever downloaded: every path is a local file.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]

# keys under which training scripts commonly nest the model weights, tried in this order
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state", "model_state_dict", "net")
_LIST_LIMIT = 40


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the model (``strict=True``)."""

    def __init__(self, source: str, report: "LoadReport"):
        self.source = source
        self.report = report
        super().__init__(
            f"checkpoint {source} does not match the model:\n{report.describe()}\n"
            "Pass strict=False to load the matching tensors and skip the rest (a warning lists them)."
        )


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, ckpt, model
    dropped: list[str] = field(default_factory=list)  # keys deliberately left out (heads, decoders, other nets)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        lines = []
        for title, items in (
            ("missing keys (in the model, not in the checkpoint)", self.missing),
            ("unexpected keys (in the checkpoint, not in the model)", self.unexpected),
            (
                "shape mismatches (key: checkpoint shape vs model shape)",
                [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched],
            ),
        ):
            if items:
                lines.append(f"  {title} [{len(items)}]: {_short_list(items)}")
        if self.dropped:
            lines.append(f"  dropped on purpose [{len(self.dropped)}]: {_short_list(self.dropped)}")
        return "\n".join(lines) if lines else "  all keys and shapes match"


def _short_list(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f", ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else "")


def read_state_dict(path: str | Path) -> StateDict:
    """Read a local checkpoint file and unwrap it to a flat ``{key: tensor}`` dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file {path} does not exist (revtal never downloads weights: pass a local file)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  re-raised with the file name
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: object, source: str = "<state dict>") -> StateDict:
    while isinstance(obj, Mapping) and not _is_flat_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise ValueError(
                f"checkpoint {source}: found no state dict; top-level keys are {sorted(map(str, obj))[:20]} "
                f"(expected tensors, or one of {_WRAPPER_KEYS} holding them)"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {source} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _is_flat_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and any(isinstance(v, Tensor) for v in obj.values())


def select_prefixed(state_dict: StateDict, prefixes: Iterable[str]) -> tuple[StateDict, list[str]]:
    """For each prefix in turn: if some keys carry it, keep only those (prefix removed) and drop the others.

    Returns the selected state dict and the dropped keys (original names)."""
    dropped: list[str] = []
    for prefix in prefixes:
        if not any(k.startswith(prefix) for k in state_dict):
            continue
        dropped += [k for k in state_dict if not k.startswith(prefix)]
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict, dropped


def drop_matching(state_dict: StateDict, patterns: Iterable[str]) -> tuple[StateDict, list[str]]:
    """Remove keys matching any regular expression in ``patterns`` (``re.match``); returns (kept, dropped)."""
    compiled = [re.compile(p) for p in patterns]
    dropped = [k for k in state_dict if any(c.match(k) for c in compiled)]
    return {k: v for k, v in state_dict.items() if k not in set(dropped)}, dropped


def compare(module: nn.Module, state_dict: StateDict) -> LoadReport:
    expected = module.state_dict()
    report = LoadReport()
    report.missing = [k for k in expected if k not in state_dict]
    report.unexpected = [k for k in state_dict if k not in expected]
    report.mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    return report


def load_checked(
    module: nn.Module,
    state_dict: StateDict,
    *,
    strict: bool = True,
    source: str = "<state dict>",
    dropped: Iterable[str] = (),
) -> LoadReport:
    """Load ``state_dict`` into ``module``; strict: any missing/unexpected/mismatched key raises
    :class:`CheckpointMismatchError` and nothing is loaded. Non-strict: the matching tensors are loaded and a
    warning lists the rest."""
    report = compare(module, state_dict)
    report.dropped = list(dropped)
    if report.dropped:
        logger.info("checkpoint %s: dropped %d keys not used by the backbone: %s", source, len(report.dropped),
                    _short_list(report.dropped))
    if not report.clean:
        if strict:
            raise CheckpointMismatchError(source, report)
        warnings.warn(f"checkpoint {source} loaded with strict=False:\n{report.describe()}", stacklevel=3)
    bad_shapes = {k for k, _, _ in report.mismatched}
    module.load_state_dict({k: v for k, v in state_dict.items() if k not in bad_shapes}, strict=False)
    return report
