"""Trimmed-clip datasets as their users keep them: which file is which class.

Four layouts, read into one :class:`ClipList` (entries of path + class index + where the entry came from):

* **whitespace list** (VideoMAE's ``train.csv`` / mmaction2's ``*_list_videos.txt``): one ``path label`` per line,
  split on whitespace; a middle column (mmaction2's rawframe lists and VideoMAE's ``path num_frames label``)
  is read as the frame count and ignored, since revtal decodes video files.
* **CSV** (``path,label``) with or without a header. A header names the columns: the path is ``path``, ``video``,
  ``filename``, ``video_path`` or ``file``; the class ``label``, ``class``, ``label_id``, ``class_id`` or
  ``category``. The official Kinetics CSVs (``label,youtube_id,time_start,time_end,split``) name their clips the
  way the common downloaders write them: ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``.
* **Something-Something v2 JSON**: ``labels.json`` (class name → id string) and ``train.json`` /
  ``validation.json`` (entries with ``id`` and ``template``, whose ``[something]`` placeholders lose their
  brackets to give the class name; ``label`` is the filled-in sentence, used only when there is no template).
  The clip of entry ``id`` is ``{id}.webm`` (any video extension).
* **a folder per class**: ``root/<class name>/*.mp4``; classes are the sorted folder names.

Labels are class indices (integers) or class names. Names map through ``classes`` (a list, or a text file with one
name per line, or ``name,id`` / ``id name`` lines) — given, or else the sorted names of the list itself.

Bad entries (a missing file, a label out of range or unknown, an empty class folder) raise one
:class:`ClipListError` naming the file, line and value; with ``skip_bad_videos=True`` they are left out and listed
in :attr:`ClipList.skipped` instead. A malformed line (wrong number of columns) is always an error: it means the
file is not in the format assumed.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from revtal.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
PATH_COLUMNS = ("path", "video", "filename", "video_path", "file")
LABEL_COLUMNS = ("label", "class", "label_id", "class_id", "category")
LIST_FORMATS = ("auto", "list", "csv", "ssv2", "folders")


class ClipListError(ValueError, UserError):
    """A clip list (or one of its entries) is unusable; the message names the file, the line and the value."""


@dataclass(frozen=True)
class ClipEntry:
    path: Path
    label: int
    source: str  # "file:line" (or the folder) the entry came from, for error messages


@dataclass
class ClipList:
    entries: list[ClipEntry]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # one line per left-out entry: where, what, why

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> list[int]:
        counts = [0] * self.num_classes
        for entry in self.entries:
            counts[entry.label] += 1
        return counts


def read_classes(spec: str | os.PathLike | Sequence[str] | None) -> list[str] | None:
    """Class names in index order from a list, or from a file: one name per line, ``name,id`` (CSV), ``id name``,
    or a JSON mapping name → id (SSv2's labels.json) or list."""
    if spec is None or (isinstance(spec, str) and not spec):
        return None
    if not isinstance(spec, (str, os.PathLike)):
        return [str(s) for s in spec]
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            return [str(s) for s in data]
        return _names_by_id({str(k): v for k, v in data.items()}, str(path))
    by_name: dict[str, object] = {}
    plain: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if "," in line:
            name, _, index = line.rpartition(",")
            if not index.strip().lstrip("-").isdigit():  # a header (name,id)
                continue
            by_name[name.strip().strip('"')] = index.strip()
        elif line.split(maxsplit=1)[0].isdigit() and len(line.split(maxsplit=1)) == 2:
            index, name = line.split(maxsplit=1)
            by_name[name.strip()] = index
        else:
            plain.append(line)
    if by_name and plain:
        raise ClipListError(f"{path}: mixes 'name,id' lines with plain names (e.g. {plain[0]!r})")
    return _names_by_id(by_name, str(path)) if by_name else plain


def _names_by_id(by_name: dict[str, object], where: str) -> list[str]:
    ids = {}
    for name, value in by_name.items():
        try:
            ids[name] = int(value)
        except (TypeError, ValueError):
            raise ClipListError(f"{where}: class {name!r} has id {value!r}, not an integer") from None
    expected = set(range(len(ids)))
    if set(ids.values()) != expected:
        wrong = sorted(set(ids.values()) ^ expected)[:5]
        raise ClipListError(f"{where}: class ids must be 0..{len(ids) - 1} each once; check ids {wrong}")
    return [name for name, _ in sorted(ids.items(), key=lambda kv: kv[1])]


@dataclass
class _RawEntry:
    path: Path
    label: str
    source: str


def _read_whitespace_list(path: Path, root: Path) -> list[_RawEntry]:
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) not in (2, 3):
            raise ClipListError(f"{path} line {number}: expected 'path label' (or 'path num_frames label'), "
                                f"got {len(parts)} columns: {line.strip()!r}")
        entries.append(_RawEntry(root / parts[0], parts[-1], f"{path} line {number}"))
    return entries


def _read_csv(path: Path, root: Path) -> list[_RawEntry]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    rows = [(n, r) for n, r in enumerate(rows, 1) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0][1]]
    entries = []
    if "youtube_id" in header and "label" in header:  # the official Kinetics CSV
        col = {name: header.index(name) for name in ("label", "youtube_id", "time_start", "time_end")
               if name in header}
        if len(col) < 4:
            raise ClipListError(f"{path} line 1: a Kinetics CSV needs label, youtube_id, time_start, time_end")
        for number, row in rows[1:]:
            try:
                name = f"{row[col['youtube_id']]}_{int(float(row[col['time_start']])):06d}_" \
                       f"{int(float(row[col['time_end']])):06d}.mp4"
            except (IndexError, ValueError):
                raise ClipListError(f"{path} line {number}: cannot read youtube_id/time_start/time_end from "
                                    f"{','.join(row)!r}") from None
            entries.append(_RawEntry(root / name, row[col["label"]].strip(), f"{path} line {number}"))
        return entries
    path_col = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    if path_col is not None and label_col is not None:
        body = rows[1:]
    elif path_col is not None or label_col is not None:
        raise ClipListError(f"{path} line 1: a header needs a path column ({'/'.join(PATH_COLUMNS)}) and a label "
                            f"column ({'/'.join(LABEL_COLUMNS)}); got {rows[0][1]}")
    else:
        path_col, label_col, body = 0, -1, rows
    for number, row in body:
        if len(row) < 2 or (label_col != -1 and len(row) <= max(path_col, label_col)):
            raise ClipListError(f"{path} line {number}: expected at least a path and a label, got {','.join(row)!r}")
        entries.append(_RawEntry(root / row[path_col].strip(), row[label_col].strip(), f"{path} line {number}"))
    return entries


def ssv2_class_name(template: str) -> str:
    """SSv2's class of an entry: its template with the ``[something]`` brackets removed."""
    return re.sub(r"\[([^\]]*)\]", r"\1", template).strip()


def _read_ssv2(path: Path, root: Path) -> list[_RawEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ClipListError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, list):
        raise ClipListError(f"{path}: expected a list of {{'id', 'template'}} entries, got {type(data).__name__}")
    entries = []
    for number, item in enumerate(data):
        if not isinstance(item, dict) or "id" not in item or not ("template" in item or "label" in item):
            raise ClipListError(f"{path} entry {number}: expected 'id' and 'template' (or 'label'), got {item!r:.80}")
        name = ssv2_class_name(item["template"]) if "template" in item else str(item["label"])
        entries.append(_RawEntry(root / str(item["id"]), name, f"{path} entry {number}"))
    return entries


def _read_folders(root: Path) -> tuple[list[_RawEntry], list[str], list[str]]:
    """Entries, class names, and the empty class folders."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries, empty = [], []
    for name in classes:
        files = sorted(p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if not files:
            empty.append(name)
        entries.extend(_RawEntry(f, name, str(root / name)) for f in files)
    return entries, classes, empty


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "folders"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "ssv2"
    if suffix == ".csv":
        with open(path, encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), "")
        return "csv" if "," in first else "list"  # VideoMAE writes space-separated lists named .csv
    return "list"


def _resolve_file(path: Path) -> Path | None:
    """``path`` itself, or with a video extension added (SSv2 ids, lists without extensions)."""
    if path.is_file():
        return path
    if not path.suffix or path.suffix.lower() not in VIDEO_EXTENSIONS:
        for ext in VIDEO_EXTENSIONS:
            candidate = path.with_name(path.name + ext)
            if candidate.is_file():
                return candidate
    return None


def load_clip_list(
    source: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    format: str = "auto",
    classes: str | os.PathLike | Sequence[str] | None = None,
    skip_bad_videos: bool = False,
) -> ClipList:
    """Read a clip list (see the module docstring); ``root`` is prepended to relative paths (default: the list's
    folder). Checks that every file exists and every label is a class; returns entries in file order."""
    source = Path(source)
    if format not in LIST_FORMATS:
        raise ClipListError(f"unknown clip list format {format!r}; formats: {', '.join(LIST_FORMATS)}")
    if not source.exists():
        raise FileNotFoundError(f"clip list not found: {source}")
    format = detect_format(source) if format == "auto" else format
    base = Path(root) if root else (source if format == "folders" else source.parent)
    names = read_classes(classes)
    problems: list[str] = []
    if format == "folders":
        if not source.is_dir():
            raise ClipListError(f"{source}: format 'folders' needs a folder with one subfolder per class")
        raw, folder_classes, empty = _read_folders(source)
        names = names or folder_classes
        problems += [f"{source / name}: class {name!r} has no videos ({', '.join(VIDEO_EXTENSIONS)})"
                     for name in empty]
    else:
        reader = {"list": _read_whitespace_list, "csv": _read_csv, "ssv2": _read_ssv2}[format]
        raw = reader(source, base)
        if format == "ssv2" and names is None:
            sibling = source.parent / "labels.json"
            if sibling.is_file():
                names = read_classes(sibling)
    if not raw:
        raise ClipListError(f"{source}: no entries")
    if names is None:
        if all(_is_int(r.label) for r in raw):
            top = max(int(r.label) for r in raw)
            names = [str(i) for i in range(top + 1)]
        else:
            names = sorted({r.label for r in raw})
    index = {name: i for i, name in enumerate(names)}
    entries: list[ClipEntry] = []
    for r in raw:
        if r.label in index:
            label = index[r.label]
        elif _is_int(r.label):
            label = int(r.label)
            if not 0 <= label < len(names):
                problems.append(f"{r.source}: label {label} is out of range [0, {len(names)})")
                continue
        else:
            problems.append(f"{r.source}: unknown label {r.label!r} (not one of the {len(names)} classes)")
            continue
        found = _resolve_file(r.path)
        if found is None:
            problems.append(f"{r.source}: video not found: {r.path}")
            continue
        entries.append(ClipEntry(found, label, r.source))
    if problems and not skip_bad_videos:
        more = f" (and {len(problems) - 1} more; data.skip_bad_videos: true leaves them out)" if len(problems) > 1 \
            else " (data.skip_bad_videos: true leaves it out)"
        raise ClipListError(problems[0] + more)
    if not entries:
        raise ClipListError(f"{source}: none of the {len(raw)} entries is usable; first problem: {problems[0]}")
    return ClipList(entries, list(names), problems)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()
