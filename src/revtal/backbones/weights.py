"""Loading local checkpoints into backbones, with errors that say exactly what did not fit.

Checkpoints come in many wrappings: a bare state dict, ``{"model": ...}``, ``{"state_dict": ...}``, keys prefixed
by ``module.`` (DDP), ``backbone.`` (a detector or localizer), ``net.`` (a revtal :class:`VideoBackbone`) or
``encoder.`` (a VideoMAE pretraining checkpoint, whose decoder we do not need). :func:`read_state_dict` unwraps the
file; :func:`select_prefixed` keeps one sub-network; :func:`load_checked` compares the keys and shapes with the
module and either loads or raises :class:`CheckpointMismatchError` listing missing keys, unexpected keys and shape
mismatches. Nothing is ever downloaded: every path is a local file.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import logging
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

from revtal.backbones.layouts import StateDict, drop_matching, identify, select_prefixed  # noqa: F401 (re-exported)

# keys under which training scripts commonly nest the model weights, tried in this order
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state", "model_state_dict", "net", "blobs")
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
    layout: str = ""  # the checkpoint layout recognised (revtal.backbones.layouts)
    notes: list[str] = field(default_factory=list)  # what loading that layout changed (heads dropped, inflation)
    foreign: tuple[str, str] | None = None  # (what the checkpoint is, what to do) when its layout is a known one

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
        if self.foreign:
            return f"it is {self.foreign[0]}: {self.foreign[1]}"
        prefix = _shared_prefix_shift(self.unexpected, self.missing)
        if prefix:
            return (f"the checkpoint's keys carry an extra prefix {prefix!r} (a wrapped model, e.g. DDP or a larger "
                    "network)")
        prefix = _shared_prefix_shift(self.missing, self.unexpected)
        if prefix:
            return (f"the checkpoint holds only a part of the model (its keys lack the prefix {prefix!r}), e.g. a "
                    "bare backbone: load it as the backbone's pretrained weights instead")
        if self.mismatched and not (self.missing or self.unexpected):
            return ("the same layers with other sizes: the checkpoint was made with other dimensions (number of "
                    "classes, widths, frames or image size); use the config it was trained with")
        if _same_layers_nested_differently(self.missing, self.unexpected):
            return ("the same layers under other module paths: the checkpoint was trained in another backbone.mode "
                    "(e.g. losa wraps the backbone with adapters) or by another version of the model")
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
        report.foreign = identify(state_dict)
        raise CheckpointMismatchError(source, report, hint)
    module.load_state_dict(state_dict)


def _short_list(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f", ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else "")


def read_state_dict(path: str | Path, trust: bool = False) -> StateDict:
    """Read a local checkpoint file (see :func:`read_checkpoint`) and unwrap it to a flat ``{key: tensor}`` dict."""
    return unwrap_state_dict(read_checkpoint(path, trust=trust), source=str(path))


# What the files people download need besides tensors: training scripts save their argparse arguments (VideoMAE's
# save_model) and numpy scalars, dtypes and arrays (metrics, random-generator states). None of these runs code when
# unpickled, so they are read through torch's weights-only unpickler with an allow-list, never by full unpickling.
def _harmless_globals() -> dict[str, object]:
    allowed: dict[str, object] = {"argparse.Namespace": argparse.Namespace, "numpy.dtype": np.dtype,
                                  "numpy.ndarray": np.ndarray}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}._reconstruct"] = np._core.multiarray._reconstruct
        allowed[f"{module}.scalar"] = np._core.multiarray.scalar
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            allowed[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return allowed


TRUST_OPTION = "--trust-checkpoint (config: backbone.trust_checkpoint: true)"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def plain_text(message: str) -> str:
    """``message`` without terminal escape codes (torch colours parts of its weights-only error)."""
    return _ANSI.sub("", message)


class UntrustedCheckpointError(ValueError):
    """Reading the file needs full unpickling (it may run code) and the user did not ask for it."""


def read_checkpoint(path: str | Path, trust: bool = False) -> object:
    """The object saved in a local checkpoint file, read without running code from it.

    In order: ``torch.load(weights_only=True)``; the same with :func:`_harmless_globals` allowed when the file needs
    them; a plain pickle of numpy arrays (Caffe2 ``.pkl`` models, e.g. SlowFast's) through an unpickler that allows
    numpy only. Anything else needs ``trust=True`` (full unpickling: only for files from a trusted source), and the
    error names that option. A whole pickled ``nn.Module`` is recognised and explained; with ``trust=True`` its
    state dict is returned."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file {path} does not exist (revtal never downloads weights: pass a local file)"
        )
    if not _is_torch_file(path):
        return _read_numpy_pickle(path)
    allowed = _harmless_globals()
    try:
        with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if trust:
            return _read_trusted(path)
        message = plain_text(str(error))
        foreign = [n for n in _globals_needed(path) or _GLOBAL.findall(message) if n not in allowed]
        raise _untrusted_error(path, foreign, message) from None
    except Exception as error:  # noqa: BLE001  a truncated or foreign file: re-raised with the file name
        raise ValueError(f"cannot read checkpoint {path}: {plain_text(str(error)).strip()}") from None


def _is_torch_file(path: Path) -> bool:
    """A zip archive (torch.save since 1.6) or torch's legacy format (a pickled magic number first)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        head = fh.read(64)
    # legacy torch.save: pickle protocol 2 of the integer magic number 0x1950a86a20f9469cfc6c
    return head.startswith(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19")


def _globals_needed(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001  legacy format: torch's error message names the first one
        return []


def _module_globals(names: Iterable[str]) -> list[str]:
    return [n for n in names if n.startswith(("torch.nn.modules.", "__main__.")) or ".models." in n]


def _untrusted_error(path: Path, names: list[str], message: str) -> UntrustedCheckpointError:
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    if _module_globals(names):
        return UntrustedCheckpointError(
            f"checkpoint {path} holds a whole pickled model (torch.save(model), classes {shown}), not a state dict: "
            f"reading it runs that model's code. Save its weights where its code is available, "
            f"torch.save(model.state_dict(), 'weights.pt'), and pass that file; or, if you trust the file, pass "
            f"{TRUST_OPTION} and revtal takes the state dict from the model"
        )
    if names:
        return UntrustedCheckpointError(
            f"checkpoint {path} needs full unpickling, which can run code: it names {shown}, not only tensors and "
            f"the harmless types revtal allows (argparse.Namespace, numpy). If you trust the file, pass "
            f"{TRUST_OPTION}"
        )
    first = next((line.strip() for line in message.splitlines() if "error" in line.lower()), message.strip())
    return UntrustedCheckpointError(
        f"checkpoint {path} cannot be read as weights only ({first[:300]}); if you trust the file, pass {TRUST_OPTION}"
    )


def _read_trusted(path: Path) -> object:
    logger.warning("reading %s with full unpickling (trusted by the user)", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001  e.g. the pickled model's class cannot be imported here
        raise ValueError(f"cannot read checkpoint {path} even with full unpickling: "
                         f"{type(error).__name__}: {plain_text(str(error)).strip()}") from None
    if isinstance(obj, nn.Module):
        logger.warning("%s holds a whole %s; using its state_dict()", path, type(obj).__name__)
        return obj.state_dict()
    return obj


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                   ("collections", "OrderedDict"): collections.OrderedDict,
                   # protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(text, "latin1")
                   ("_codecs", "encode"): codecs.encode}
        for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(core, "_reconstruct")] = np._core.multiarray._reconstruct
            allowed[(core, "scalar")] = np._core.multiarray.scalar
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a numpy checkpoint")
        return allowed[(module, name)]


def _read_numpy_pickle(path: Path) -> object:
    """A plain pickle of numpy arrays in dicts (Caffe2 models, written by Python 2: bytes decoded as latin-1), with
    the arrays as tensors."""
    try:
        with open(path, "rb") as fh:
            obj = _NumpyUnpickler(fh, encoding="latin1").load()
    except Exception as error:  # noqa: BLE001  not a pickle, or one with other objects
        raise ValueError(
            f"cannot read checkpoint {path}: neither a torch.save file nor a pickle of numpy arrays "
            f"({type(error).__name__}: {plain_text(str(error)).strip()[:200]})"
        ) from None
    return _numpy_to_torch(obj)


def _numpy_to_torch(obj: object) -> object:
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, Mapping):
        return {k: _numpy_to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_numpy_to_torch(v) for v in obj)
    return obj


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
    layout: str = "",
    notes: Iterable[str] = (),
    identify_from: Mapping[str, Tensor] | None = None,
    expected_backbone: str = "",
) -> LoadReport:
    """Load ``state_dict`` into ``module``; strict: any missing/unexpected/mismatched key raises
    :class:`CheckpointMismatchError` and nothing is loaded. Non-strict: the matching tensors are loaded and a
    warning lists the rest. ``identify_from``: the checkpoint as read (before key mapping), to name a known foreign
    layout in the error; ``expected_backbone``: the backbone being loaded (not suggested as the fix)."""
    report = compare(module, state_dict)
    report.dropped, report.layout, report.notes = list(dropped), layout, list(notes)
    if layout:
        logger.info("checkpoint %s: %s layout%s", source, layout, "".join(f"; {n}" for n in report.notes))
    if report.dropped:
        logger.info("checkpoint %s: dropped %d keys not used by the backbone: %s", source, len(report.dropped),
                    _short_list(report.dropped))
    if not report.clean:
        # the file as given tells its layout better than the keys after mapping; advice to use the backbone
        # already in use is no explanation
        report.foreign = identify(identify_from if identify_from is not None else state_dict)
        if report.foreign and expected_backbone and report.foreign[1] == f"use backbone {expected_backbone}":
            report.foreign = None
        if strict:
            raise CheckpointMismatchError(source, report)
        warnings.warn(f"checkpoint {source} loaded with strict=False:\n{report.describe()}", stacklevel=3)
    bad_shapes = {k for k, _, _ in report.mismatched}
    module.load_state_dict({k: v for k, v in state_dict.items() if k not in bad_shapes}, strict=False)
    return report
