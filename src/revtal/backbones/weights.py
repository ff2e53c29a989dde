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

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]

# keys under which training scripts commonly nest the model weights, tried in this order
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state", "model_state_dict", "net")
_LIST_LIMIT = 40


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the model (``strict=True``). The first line of the message is
    :meth:`LoadReport.summary` (what the command line prints); the key-by-key listing follows."""

    def __init__(self, source: str, report: "LoadReport", hint: str = ""):
        self.source = source
        self.report = report
        super().__init__(
            f"{report.summary(source)}\n{report.describe()}\n"
            + (hint or "Pass strict=False to load the matching tensors and skip the rest (a warning lists them).")
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

    def summary(self, source: str, limit: int = 3) -> str:
        """One line: the counts of missing / unexpected / shape-mismatched keys, a few of each, the likely cause."""
        parts = []
        for name, items in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape-mismatched", [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched])):
            if items:
                shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
                parts.append(f"{len(items)} {name} ({shown})")
        return f"checkpoint {source} does not fit this model: {'; '.join(parts)}. Likely cause: {self.likely_cause()}"

    def likely_cause(self) -> str:
        """The most plausible reason for the mismatch, from the pattern of the keys."""
        prefix = _shared_prefix_shift(self.unexpected, self.missing)
        if prefix:
            return (f"the checkpoint's keys carry an extra prefix {prefix!r} (a wrapped model, e.g. DDP or a larger "
                    "network)")
        prefix = _shared_prefix_shift(self.missing, self.unexpected)
        if prefix:
            return (f"the checkpoint holds only a part of the model (its keys lack the prefix {prefix!r}), e.g. a "
                    "bare backbone: load it as the backbone's pretrained weights instead")
        if _same_layers_nested_differently(self.missing, self.unexpected):
            return ("the same layers under other module paths: the checkpoint was trained in another backbone.mode "
                    "(e.g. losa wraps the backbone with adapters) or by another version of the model")
        if self.mismatched and not (self.missing or self.unexpected):
            return ("the same layers with other sizes: the checkpoint was made with other dimensions (number of "
                    "classes, widths, frames or image size); use the config it was trained with")
        if self.missing and not self.unexpected:
            return (f"the model has parts the checkpoint lacks (under {_main_group(self.missing)!r}): the checkpoint "
                    "was trained with another mode or other options (e.g. adapters, more blocks)")
        if self.unexpected and not self.missing:
            return (f"the checkpoint has parts the model lacks (under {_main_group(self.unexpected)!r}): it was "
                    "trained with another mode or other options (e.g. adapters, more blocks)")
        return "the checkpoint is of another architecture (a different backbone or localizer)"

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


def _shared_prefix_shift(longer: list[str], shorter: list[str]) -> str:
    """A prefix ``p`` with ``p + k`` in ``longer`` for most ``k`` in ``shorter`` (at least half), else ''."""
    if not longer or not shorter:
        return ""
    counts: dict[str, int] = {}
    by_tail = set(shorter)
    for key in longer:
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in by_tail:
                prefix = ".".join(parts[:i]) + "."
                counts[prefix] = counts.get(prefix, 0) + 1
                break
    if not counts:
        return ""
    prefix, count = max(counts.items(), key=lambda item: item[1])
    return prefix if count >= max(1, len(shorter) // 2) else ""


def _same_layers_nested_differently(missing: list[str], unexpected: list[str]) -> bool:
    """Most keys of the smaller side end like a key of the other (last three parts equal)."""
    if not missing or not unexpected:
        return False
    tails = [{".".join(k.split(".")[-3:]) for k in keys} for keys in (missing, unexpected)]
    smaller = min(tails, key=len)
    return len(tails[0] & tails[1]) >= max(1, len(smaller) // 2)


def _main_group(keys: list[str]) -> str:
    """The dotted module path (up to three parts) most of ``keys`` fall under."""
    counts: dict[str, int] = {}
    for key in keys:
        group = ".".join(key.split(".")[:-1][:3]) or key
        counts[group] = counts.get(group, 0) + 1
    return max(counts.items(), key=lambda item: item[1])[0]


def load_model_state(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, hint: str = "") -> None:
    """``module.load_state_dict(state_dict)`` (strict) that, on a mismatch, raises :class:`CheckpointMismatchError`
    whose first line is a summary (counts, a few keys, the likely cause) instead of PyTorch's key dump."""
    report = compare(module, dict(state_dict))
    if not report.clean:
        raise CheckpointMismatchError(source, report, hint)
    module.load_state_dict(state_dict)


def _short_list(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f", ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else "")


def _numpy_array_globals() -> list:
    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


_NUMPY_ARRAY_GLOBALS = _numpy_array_globals()


def read_state_dict(path: str | Path) -> StateDict:
    """Read a local checkpoint file and unwrap it to a flat ``{key: tensor}`` dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file {path} does not exist (revtal never downloads weights: pass a local file)"
        )
    try:
        # a revtal training checkpoint (a classification run's best.pt as a TAL backbone) also holds numpy's random
        # state: plain arrays, which the weights-only unpickler may rebuild
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
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
