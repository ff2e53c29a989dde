"""Temporal action annotations and detection results in the ActivityNet JSON formats.

Ground truth (ActivityNet-1.3; THUMOS-14 is distributed by most TAL code bases in the same layout)::

    {"database": {VIDEO_ID: {"subset": "training", "duration": 123.4, "fps": 30.0,        # fps optional
                             "annotations": [{"segment": [start_s, end_s], "label": "Long jump"}, ...]}}}

An optional top-level ``"classes"`` list (written by :mod:`revtal.data.synthetic`) fixes the class order; otherwise
the order of the instances' ``label_id`` (ActionFormer's and OpenTAD's files), else the sorted set of label names,
or the ``classes`` argument when given. Extra fields (``segment(frames)``, ``url``, ``resolution``, a top-level
``taxonomy``) are ignored. Loading validates everything a
training run would otherwise trip over later, and every error names the video id and the field:

* unknown subset name (names are canonicalised: "Test" / "test" → "testing", "train" → "training"), missing,
  non-positive or implausible (over :data:`MAX_DURATION_S`) duration, non-numeric fields → error; a video id that
  appears twice in the file → error naming both entries;
* negative start or end before start ("inverted") → error; a label outside a fixed class list → error;
* the ground truth is kept **as distributed**, which is how the official evaluation code scores it: a segment
  reaching past the video's declared duration (26 test segments of THUMOS-14) and exact duplicate instances
  (common in THUMOS) stay. Training targets (:meth:`VideoAnnotation.training_targets`) clip segments to the video,
  drop those left empty and drop duplicates; loading warns once about segments past the duration;
* ``exclude_labels`` instances (THUMOS "Ambiguous") are not a class: they are kept apart in
  :attr:`VideoAnnotation.ambiguous`, where the THUMOS protocol uses them (a false positive overlapping one is not
  counted); ``blocked`` video ids (known-missing or broken downloads) are skipped.

Detection results (ActivityNet results format, what :func:`write_predictions` writes and the evaluator reads)::

    {"version": "VERSION 1.3", "results": {VIDEO_ID: [{"label": "Long jump", "score": 0.9, "segment": [s, e]}]},
     "external_data": {"used": false, "details": ""}}
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from revtal.utils.io import atomic_write

log = logging.getLogger(__name__)

# Subset names are canonicalised to ActivityNet's ("training", "validation", "testing"): the THUMOS-14 JSON files
# that TAL code bases distribute say "Validation" and "Test", configs often say "train" / "val".
SUBSET_ALIASES = {
    "training": "training", "train": "training",
    "validation": "validation", "val": "validation",
    "testing": "testing", "test": "testing",
}
KNOWN_SUBSETS = tuple(SUBSET_ALIASES)


def canonical_subset(name: str) -> str:
    """"Train", "train", "training" → "training" (and likewise validation / testing); other names raise."""
    canonical = SUBSET_ALIASES.get(str(name).lower())
    if canonical is None:
        raise AnnotationError(f"unknown subset {name!r}; known subset names: {', '.join(KNOWN_SUBSETS)}")
    return canonical

RESULTS_VERSION = "VERSION 1.3"

# Instances closer than this (seconds) in both boundaries and with the same label count as duplicates.
_DUPLICATE_TOLERANCE_S = 1e-6

# No video is longer than this (a year): a larger duration is a typo or garbage, and would overflow frame counts.
MAX_DURATION_S = 365 * 24 * 3600.0

# A video whose decoded length differs from its annotated duration by more than this fraction gets a warning.
DURATION_TOLERANCE = 0.05


def duration_mismatch(video_id: str, annotated: float, decoded: float, tolerance: float = DURATION_TOLERANCE) -> str | None:
    """The warning for a video whose decoded length is more than ``tolerance`` away from its annotated duration
    (segments and the frame grid follow the annotated one), else None."""
    if decoded > 0 and abs(decoded - annotated) > tolerance * decoded:
        return (f"video {video_id!r}: annotated duration {annotated:g} s but the file decodes to {decoded:g} s "
                f"({100 * abs(decoded - annotated) / decoded:.0f}% apart): segments and predictions follow the "
                f"annotated duration; fix the annotation if it is wrong")
    return None


class AnnotationError(ValueError):
    """Malformed annotation or prediction data; the message names the video id and field."""


@dataclass
class VideoAnnotation:
    """One video's ground truth: segments in seconds and class indices into ``AnnotationSet.classes``."""

    video_id: str
    subset: str
    duration: float
    segments: np.ndarray  # (N, 2) float64, seconds
    labels: np.ndarray  # (N,) int64
    fps: float | None = None
    ambiguous: np.ndarray | None = None  # (K, 2) seconds: THUMOS "Ambiguous" instances (not a class)

    def __post_init__(self):
        self.segments = np.asarray(self.segments, dtype=np.float64).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.ambiguous = np.asarray(self.ambiguous if self.ambiguous is not None else [], dtype=np.float64).reshape(-1, 2)
        if len(self.segments) != len(self.labels):
            raise AnnotationError(
                f"video {self.video_id!r}: {len(self.segments)} segments but {len(self.labels)} labels"
            )

    def training_targets(self) -> tuple[np.ndarray, np.ndarray]:
        """(segments, labels) to train on: segments clipped to [0, duration], those left without length and exact
        duplicates dropped (evaluation keeps them all, as distributed)."""
        kept: list[tuple[float, float]] = []
        labels: list[int] = []
        for (start, end), label in zip(self.segments, self.labels):
            start, end = max(0.0, float(start)), min(float(end), self.duration)
            if end <= start:
                continue
            if any(lab == label and abs(s - start) <= _DUPLICATE_TOLERANCE_S and abs(e - end) <= _DUPLICATE_TOLERANCE_S
                   for (s, e), lab in zip(kept, labels)):
                continue
            kept.append((start, end))
            labels.append(int(label))
        return np.array(kept, dtype=np.float64).reshape(-1, 2), np.array(labels, dtype=np.int64)


@dataclass
class AnnotationSet:
    """A class list plus per-video annotations; videos keep the file's order."""

    classes: list[str]
    videos: dict[str, VideoAnnotation] = field(default_factory=dict)

    def class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def subset(self, name: str | Sequence[str]) -> "AnnotationSet":
        """The videos of one subset (or of several, given a list), with the same class list."""
        wanted = _normalise_subset_request(name, available={v.subset for v in self.videos.values()})
        return AnnotationSet(
            classes=list(self.classes),
            videos={vid: ann for vid, ann in self.videos.items() if ann.subset in wanted},
        )

    @property
    def subsets(self) -> list[str]:
        return sorted({v.subset for v in self.videos.values()})

    def __len__(self) -> int:
        return len(self.videos)

    def to_json(self) -> dict[str, Any]:
        """The ActivityNet ground-truth layout (plus the ``classes`` list), loadable by :func:`load_annotations`."""
        database = {}
        for vid, ann in self.videos.items():
            entry: dict[str, Any] = {
                "subset": ann.subset,
                "duration": float(ann.duration),
                "annotations": [
                    {"segment": [float(s), float(e)], "label": self.classes[int(lab)]}
                    for (s, e), lab in zip(ann.segments, ann.labels)
                ],
            }
            if ann.fps is not None:
                entry["fps"] = float(ann.fps)
            entry["annotations"] += [{"segment": [float(s), float(e)], "label": "Ambiguous"} for s, e in ann.ambiguous]
            database[vid] = entry
        return {"version": "revtal", "classes": list(self.classes), "database": database}


def _normalise_subset_request(name: str | Sequence[str], available: Iterable[str]) -> set[str]:
    names = [name] if isinstance(name, str) else list(name)
    wanted = {canonical_subset(n) for n in names}
    available = set(available)
    if available and not wanted & available:
        raise AnnotationError(f"subset {sorted(wanted)} has no videos; present subsets: {sorted(available)}")
    return wanted


def _read_json(path_or_data: str | os.PathLike | Mapping, what: str) -> tuple[Mapping, str]:
    if isinstance(path_or_data, Mapping):
        return path_or_data, f"<{what} dict>"
    path = Path(path_or_data)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh, object_pairs_hook=_refuse_duplicate_keys), str(path)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    except _DuplicateKey as dup:
        raise AnnotationError(f"{path}: {dup}") from None


class _DuplicateKey(Exception):
    pass


def _describe_entry(value: Any) -> str:
    if isinstance(value, Mapping) and ("subset" in value or "duration" in value):
        count = len(value.get("annotations") or []) if isinstance(value.get("annotations"), list) else "?"
        return f"subset {value.get('subset')!r}, duration {value.get('duration')!r}, {count} annotations"
    return json.dumps(value)[:60]


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json object hook: a key given twice is an error naming both entries (json.load would keep the last)."""
    seen: dict[str, int] = {}
    for position, (key, value) in enumerate(pairs):
        if key in seen:
            first = pairs[seen[key]][1]
            what = "video id" if isinstance(value, Mapping) and "subset" in value else "key"
            raise _DuplicateKey(
                f"{what} {key!r} appears twice in one object: entry {seen[key] + 1} ({_describe_entry(first)}) and "
                f"entry {position + 1} ({_describe_entry(value)}); keep one"
            )
        seen[key] = position
    return dict(pairs)


def _read_blocked(blocked: Iterable[str] | str | os.PathLike) -> set[str]:
    """Video ids to skip: an iterable of ids, or a path to a text file with one id per line (# comments)."""
    if isinstance(blocked, (str, os.PathLike)):
        path = Path(blocked)
        if not path.is_file():
            raise FileNotFoundError(f"blocked-video list not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        return {ln.split("#", 1)[0].strip() for ln in lines} - {""}
    return {str(v) for v in blocked}


def _as_number(value: Any, where: str) -> float:
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise AnnotationError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: expected a finite number, got {value!r}")
    return value


def _as_segment(value: Any, where: str) -> tuple[float, float]:
    if getattr(value, "ndim", None) == 1 and hasattr(value, "tolist"):  # numpy / torch vectors
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise AnnotationError(f"{where}: expected [start, end] in seconds, got {value!r}")
    return _as_number(value[0], where + "[0]"), _as_number(value[1], where + "[1]")


def _order_by_label_id(database: Mapping, names: set[str], excluded: set[str]) -> list[str] | None:
    """The class order of ActionFormer / OpenTAD files, whose instances carry ``label_id``: by that id, when every
    class has one consistent id; else None."""
    ids: dict[str, set] = {}
    for entry in database.values():
        for inst in (entry.get("annotations") or []) if isinstance(entry, Mapping) else []:
            if isinstance(inst, Mapping) and inst.get("label") in names:
                ids.setdefault(inst["label"], set()).add(inst.get("label_id"))
    single = {name: next(iter(v)) for name, v in ids.items() if len(v) == 1}
    if set(single) != names or not all(isinstance(i, int) and not isinstance(i, bool) for i in single.values()):
        return None
    if len(set(single.values())) != len(single):
        return None
    return sorted(names, key=lambda name: single[name])


def load_annotations(
    path: str | os.PathLike | Mapping,
    subset: str | Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    blocked: Iterable[str] | str | os.PathLike = (),
    exclude_labels: Iterable[str] = ("Ambiguous",),
) -> AnnotationSet:
    """Read and validate an ActivityNet-style ground-truth JSON (a path or the already-parsed dict).

    ``subset`` keeps only those videos (the class list still comes from the whole file, so the class indices of
    the training and validation sets agree). ``classes`` fixes the class order and rejects other labels.
    """
    data, source = _read_json(path, "annotation")
    database = data.get("database") if isinstance(data, Mapping) else None
    if not isinstance(database, Mapping):
        raise AnnotationError(f"{source}: missing top-level 'database' mapping video id -> annotation")
    excluded = set(exclude_labels)
    blocked_ids = _read_blocked(blocked)

    if classes is None and isinstance(data.get("classes"), list):
        classes = data["classes"]
    fixed_classes = classes is not None
    if fixed_classes:
        class_list = [str(c) for c in classes]
        if len(set(class_list)) != len(class_list):
            raise AnnotationError(f"{source}: the class list has duplicate names")
    else:
        names: set[str] = set()
        for vid, entry in database.items():
            for inst in (entry.get("annotations") or []) if isinstance(entry, Mapping) else []:
                if isinstance(inst, Mapping) and isinstance(inst.get("label"), str) and inst["label"] not in excluded:
                    names.add(inst["label"])
        class_list = _order_by_label_id(database, names, excluded) or sorted(names)
    index = {name: i for i, name in enumerate(class_list)}

    videos: dict[str, VideoAnnotation] = {}
    beyond: list[str] = []
    duplicates = 0
    for vid, entry in database.items():
        vid = str(vid)
        if vid in blocked_ids:
            continue
        where = f"{source}: video {vid!r}"
        if not isinstance(entry, Mapping):
            raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
        if "subset" not in entry:
            raise AnnotationError(f"{where}: missing field 'subset'")
        video_subset = SUBSET_ALIASES.get(str(entry["subset"]).lower())
        if video_subset is None:
            raise AnnotationError(
                f"{where}: field 'subset' has unknown value {entry['subset']!r} (known: {', '.join(KNOWN_SUBSETS)})"
            )
        if "duration" not in entry or entry["duration"] is None:
            raise AnnotationError(f"{where}: missing field 'duration'")
        duration = _as_number(entry["duration"], f"{where}: field 'duration'")
        if duration <= 0:
            raise AnnotationError(f"{where}: field 'duration' must be > 0 seconds, got {duration}")
        if duration > MAX_DURATION_S:
            raise AnnotationError(f"{where}: field 'duration' is {duration:g} s, more than a year: not a video length")
        fps = entry.get("fps")
        if fps is not None:
            fps = _as_number(fps, f"{where}: field 'fps'")
            if not 0 < fps <= 10000:
                raise AnnotationError(f"{where}: field 'fps' must be in (0, 10000], got {fps}")
        instances = entry.get("annotations", [])
        if instances is None:
            instances = []
        if not isinstance(instances, list):
            raise AnnotationError(f"{where}: field 'annotations' must be a list")

        segments: list[tuple[float, float]] = []
        labels: list[int] = []
        ambiguous: list[tuple[float, float]] = []
        for i, inst in enumerate(instances):
            inst_where = f"{where}: annotations[{i}]"
            if not isinstance(inst, Mapping):
                raise AnnotationError(f"{inst_where}: expected an object with 'segment' and 'label'")
            if "label" not in inst:
                raise AnnotationError(f"{inst_where}: missing field 'label'")
            label = inst["label"]
            if not isinstance(label, str):
                raise AnnotationError(f"{inst_where}: field 'label' must be a string, got {label!r}")
            if label not in excluded and label not in index:
                raise AnnotationError(f"{inst_where}: field 'label' has unknown class {label!r}")
            if "segment" not in inst:
                raise AnnotationError(f"{inst_where}: missing field 'segment'")
            start, end = _as_segment(inst["segment"], f"{inst_where}: field 'segment'")
            if start < 0:
                raise AnnotationError(f"{inst_where}: field 'segment' starts at a negative time ({start})")
            if end < start:
                raise AnnotationError(f"{inst_where}: field 'segment' is inverted (end {end} < start {start})")
            if label in excluded:
                ambiguous.append((start, end))
                continue
            if end > duration:
                beyond.append(f"{vid} [{start:g}, {end:g}] > {duration:g} s")
            if any(
                lab == index[label] and abs(s - start) <= _DUPLICATE_TOLERANCE_S and abs(e - end) <= _DUPLICATE_TOLERANCE_S
                for (s, e), lab in zip(segments, labels)
            ):
                duplicates += 1
            segments.append((start, end))
            labels.append(index[label])
        videos[vid] = VideoAnnotation(
            video_id=vid,
            subset=video_subset,
            duration=duration,
            segments=np.array(segments, dtype=np.float64).reshape(-1, 2),
            labels=np.array(labels, dtype=np.int64),
            fps=fps,
            ambiguous=np.array(ambiguous, dtype=np.float64).reshape(-1, 2),
        )
    if duplicates:
        log.info("%s: %d duplicate instances (kept for evaluation, as distributed; trained on once)", source, duplicates)
    if beyond:
        log.warning("%s: %d segments end past their video's declared duration (%s%s): evaluation scores them as "
                    "distributed, training targets clip them to the video", source, len(beyond), "; ".join(beyond[:3]),
                    ", ..." if len(beyond) > 3 else "")

    result = AnnotationSet(classes=class_list, videos=videos)
    if subset is not None:
        result = result.subset(subset)
    return result


def save_annotations(path: str | os.PathLike, annotations: AnnotationSet) -> None:
    """Write ``annotations`` as ActivityNet-style JSON (atomically)."""
    _atomic_write_json(path, annotations.to_json())


# --------------------------------------------------------------------------------------------------- predictions


def _validate_prediction(pred: Any, where: str) -> dict[str, Any]:
    if not isinstance(pred, Mapping):
        raise AnnotationError(f"{where}: expected an object with 'label', 'score', 'segment', got {pred!r}")
    for key in ("label", "score", "segment"):
        if key not in pred:
            raise AnnotationError(f"{where}: missing field {key!r}")
    label = pred["label"]
    if not isinstance(label, str):
        raise AnnotationError(f"{where}: field 'label' must be a class name string, got {label!r}")
    score = _as_number(pred["score"], f"{where}: field 'score'")
    start, end = _as_segment(pred["segment"], f"{where}: field 'segment'")
    if end < start:
        raise AnnotationError(f"{where}: field 'segment' is inverted (end {end} < start {start})")
    return {"label": label, "score": score, "segment": [start, end]}


def validate_predictions(results: Mapping, source: str = "predictions") -> dict[str, list[dict]]:
    """Check a ``video id -> [prediction]`` mapping and return it with plain Python numbers."""
    if not isinstance(results, Mapping):
        raise AnnotationError(f"{source}: 'results' must map video id -> list of predictions")
    clean: dict[str, list[dict]] = {}
    for vid, preds in results.items():
        if not isinstance(preds, (list, tuple)):
            raise AnnotationError(f"{source}: video {vid!r}: expected a list of predictions, got {type(preds).__name__}")
        clean[str(vid)] = [
            _validate_prediction(p, f"{source}: video {vid!r}: prediction [{i}]") for i, p in enumerate(preds)
        ]
    return clean


def read_predictions(path_or_dict: str | os.PathLike | Mapping) -> dict[str, list[dict]]:
    """Read ActivityNet-format detection results; returns ``video id -> [{"label", "score", "segment"}]``.

    Accepts the full file layout (with ``"results"``) or a path to it; errors name the video id, the prediction's
    index and the field.
    """
    data, source = _read_json(path_or_dict, "predictions")
    if not isinstance(data, Mapping) or "results" not in data:
        raise AnnotationError(f"{source}: missing top-level 'results' mapping video id -> list of predictions")
    return validate_predictions(data["results"], source)


def write_predictions(
    path: str | os.PathLike,
    results: Mapping[str, Sequence[Mapping]],
    external_data: Mapping | None = None,
) -> None:
    """Write detection results in the ActivityNet format, atomically (a reader never sees half a file)."""
    clean = validate_predictions(results, f"write_predictions({path})")
    payload = {
        "version": RESULTS_VERSION,
        "results": clean,
        "external_data": dict(external_data) if external_data is not None else {"used": False, "details": ""},
    }
    _atomic_write_json(path, payload)


def _atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    atomic_write(path, lambda fh: json.dump(payload, fh, default=_json_default), binary=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
