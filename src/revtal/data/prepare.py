"""Datasets from the files their publishers distribute (``revtal prepare``).

* :func:`thumos14_annotations` — THUMOS-14's official temporal annotations, one text file per class and subset
  (``BaseballPitch_val.txt`` … ``Ambiguous_test.txt``, lines ``video_name start end`` in seconds), become revtal's
  ActivityNet-layout JSON. Durations and frame rates come from the videos themselves (THUMOS's text files have
  none). Segments are kept as distributed (a few end past their video, as in every THUMOS-14 JSON in circulation);
  "Ambiguous" instances are written with that label, which revtal treats as the THUMOS protocol does.
* :func:`reencode_videos` — a folder of videos re-encoded to a fixed frame rate and shorter side (H.264), as
  OpenTAD prepares ActivityNet: a process pool, a progress bar, one atomic write per file (an interrupted run
  resumes where it stopped: finished files are skipped), the originals only read, and a file that fails reported
  and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import av
from tqdm import tqdm

from revtal.data.annotations import AnnotationError, canonical_subset, load_annotations
from revtal.data.dataset import VIDEO_EXTENSIONS, find_media_files
from revtal.data.decoding import probe_video
from revtal.data.synthetic import fps_fraction, video_encoder
from revtal.utils.io import atomic_write
from revtal.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = VIDEO_EXTENSIONS + (".mpg", ".mpeg", ".flv")  # what the downloads come as
# BaseballPitch_val.txt, Ambiguous_test.txt: class, then the subset the official kit names val / test
_THUMOS_FILE = re.compile(r"^(?P<label>[A-Za-z0-9]+)_(?P<subset>val|test)\.txt$")
AMBIGUOUS = "Ambiguous"


# ------------------------------------------------------------------------------------------------ THUMOS-14
def read_thumos_txt(path: Path) -> list[tuple[str, float, float]]:
    """``video_name start end`` lines (any whitespace) of one official THUMOS-14 annotation file."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise AnnotationError(f"{path}:{number}: expected 'video_name start end', got {line.strip()!r}")
        try:
            start, end = float(parts[1]), float(parts[2])
        except ValueError:
            raise AnnotationError(f"{path}:{number}: start and end must be seconds, got {line.strip()!r}") from None
        if not (0 <= start <= end < 1e7):
            raise AnnotationError(f"{path}:{number}: segment [{parts[1]}, {parts[2]}] is not 0 <= start <= end")
        rows.append((parts[0], start, end))
    return rows


def thumos14_annotations(annotation_dir: str | os.PathLike, video_dir: str | os.PathLike,
                         skip_missing: bool = False) -> dict:
    """The ActivityNet-layout ground truth of THUMOS-14's official per-class files under ``annotation_dir`` (searched
    recursively, so the validation and test folders can sit side by side), durations and fps from ``video_dir``."""
    annotation_dir, video_dir = Path(annotation_dir), Path(video_dir)
    if not annotation_dir.is_dir():
        raise NotADirectoryError(f"THUMOS-14 annotation folder not found: {annotation_dir}")
    if not video_dir.is_dir():
        raise NotADirectoryError(f"video folder not found: {video_dir}")
    texts = sorted(p for p in annotation_dir.rglob("*.txt") if _THUMOS_FILE.match(p.name))
    if not texts:
        raise AnnotationError(f"{annotation_dir}: no THUMOS-14 annotation files (CLASS_val.txt / CLASS_test.txt)")
    instances: dict[str, list[tuple[float, float, str]]] = {}
    subsets: dict[str, str] = {}
    classes: set[str] = set()
    for path in texts:
        match = _THUMOS_FILE.match(path.name)
        label, subset = match["label"], canonical_subset("validation" if match["subset"] == "val" else "test")
        if label != AMBIGUOUS:
            classes.add(label)
        for video_id, start, end in read_thumos_txt(path):
            if subsets.setdefault(video_id, subset) != subset:
                raise AnnotationError(f"{path}: video {video_id!r} is also annotated in the {subsets[video_id]} files")
            instances.setdefault(video_id, []).append((start, end, label))
    files = find_media_files(video_dir, instances, VIDEO_SUFFIXES)
    missing = [v for v in instances if v not in files]
    if missing and not skip_missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(instances)} annotated videos are not in {video_dir} (e.g. "
            f"{', '.join(missing[:3])}); add them, or pass --skip-missing to leave them out"
        )
    database = {}
    for video_id in sorted(instances):
        if video_id in missing:
            continue
        info = probe_video(files[video_id])
        database[video_id] = {
            "subset": subsets[video_id], "duration": round(info.duration, 3), "fps": round(info.fps, 3),
            "annotations": [{"label": label, "segment": [start, end]} for start, end, label in sorted(instances[video_id])],
        }
    if missing:
        log.warning("left out %d annotated videos missing from %s: %s", len(missing), video_dir, ", ".join(missing[:5]))
    return {"version": "THUMOS-14 (revtal prepare thumos14)", "classes": sorted(classes), "database": database}


def write_thumos14(annotation_dir, video_dir, out, skip_missing: bool = False) -> dict:
    """:func:`thumos14_annotations` checked by :func:`load_annotations` and written to ``out`` atomically."""
    data = thumos14_annotations(annotation_dir, video_dir, skip_missing)
    load_annotations(data)  # what revtal will read: fails here, not at training time
    atomic_write(out, lambda fh: json.dump(data, fh, indent=1), binary=False)
    return data


# ----------------------------------------------------------------------------------------------- re-encoding
def output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side`` (None: unchanged), both even (yuv420p)."""
    if short_side is not None:
        scale = short_side / min(width, height)
        width, height = width * scale, height * scale
    return max(2, int(round(width / 2)) * 2), max(2, int(round(height / 2)) * 2)


def reencode_video(src: str | os.PathLike, dst: str | os.PathLike, fps: float | None = None,
                   short_side: int | None = None, crf: int = 23) -> tuple[int, float]:
    """Re-encode one video's first video stream to H.264 at ``fps`` (None: the source rate) with the shorter side
    ``short_side``; output frame ``k`` shows the source frame on screen at time ``k / fps``. Written to a temporary
    file beside ``dst`` and renamed, so ``dst`` exists only when complete. Returns (frames written, seconds)."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp{dst.suffix}")
    written = 0
    try:
        with av.open(str(src)) as source:
            stream = source.streams.video[0]
            stream.thread_type = "AUTO"
            rate = fps or float(stream.average_rate or stream.guessed_rate or 0)
            if not rate > 0:
                raise ValueError("the source does not declare a frame rate: pass --fps")
            width, height = output_size(stream.codec_context.width, stream.codec_context.height, short_side)
            codec = video_encoder()
            frame_period = 1 / fps_fraction(rate)
            with av.open(str(tmp), mode="w", format="mp4") as target:
                out = target.add_stream(codec, rate=fps_fraction(rate))
                out.width, out.height, out.pix_fmt = width, height, "yuv420p"
                out.options = {"crf": str(crf), "preset": "veryfast"} if codec == "libx264" else {"qscale": "3"}

                def emit(frame) -> None:
                    nonlocal written
                    image = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
                    image.pts, image.time_base = written, frame_period  # the source frame's time base goes
                    for packet in out.encode(image):
                        target.mux(packet)
                    written += 1

                previous, last_time, period = None, 0.0, 1.0 / rate
                for frame in source.decode(stream):
                    time = frame.time if frame.time is not None else last_time + period
                    while written / rate < time - 1e-9 and (previous is not None or written == 0):
                        emit(previous if previous is not None else frame)
                    previous, last_time = frame, time
                if previous is None:
                    raise ValueError("no decodable frames")
                source_period = 1.0 / float(stream.average_rate or rate)
                while written / rate < last_time + source_period - 1e-9:
                    emit(previous)
                for packet in out.encode():
                    target.mux(packet)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return written, written / rate


@dataclass
class ReencodeReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the destination (an earlier run)
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason


def _reencode_one(src: str, dst: str, fps: float | None, short_side: int | None, crf: int) -> str | None:
    try:
        reencode_video(src, dst, fps, short_side, crf)
        return None
    except Exception as error:  # noqa: BLE001  a bad file is reported and skipped, the others continue
        reason = f"{type(error).__name__}: {error}".strip()
        if os.environ.get("REVTAL_DEBUG"):
            reason += "\n" + traceback.format_exc()
        return reason


def reencode_videos(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, fps: float | None = None,
                    short_side: int | None = None, workers: int = 1, crf: int = 23,
                    progress: bool = True) -> ReencodeReport:
    """Re-encode every video of ``src_dir`` (not recursive) into ``dst_dir/NAME.mp4``; see the module docstring."""
    src_dir, dst_dir = Path(src_dir).resolve(), Path(dst_dir).resolve()
    if not src_dir.is_dir():
        raise NotADirectoryError(f"source video folder not found: {src_dir}")
    if dst_dir == src_dir:
        raise ValueError(f"the destination {dst_dir} is the source folder: give another one (originals are never "
                         "overwritten)")
    if fps is not None and not fps > 0:
        raise ValueError(f"--fps must be > 0, got {fps}")
    if short_side is not None and short_side < 2:
        raise ValueError(f"--short-side must be >= 2 pixels, got {short_side}")
    sources = sorted(p for p in src_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not sources:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {src_dir}")
    names = [p.stem for p in sources]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"{src_dir}: several files would become {clashes[0]}.mp4 (e.g. {clashes[0]}.avi and .mkv)")
    report = ReencodeReport()
    todo = []
    for path in sources:
        target = dst_dir / f"{path.stem}.mp4"
        if target.is_file() and target.stat().st_size > 0:  # written whole by an earlier run (renamed at the end)
            report.skipped.append(path.name)
        else:
            todo.append((path, target))
    if not todo:
        return report
    dst_dir.mkdir(parents=True, exist_ok=True)
    bar = progress_bar(total=len(todo), desc="re-encoding", unit="video", disable=not progress)
    try:
        if workers <= 1:
            for path, target in todo:
                _record(report, path.name, _reencode_one(str(path), str(target), fps, short_side, crf))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_reencode_one, str(p), str(t), fps, short_side, crf): p.name for p, t in todo}
                for future in as_completed(futures):
                    _record(report, futures[future], future.result())
                    bar.update()
    finally:
        bar.close()
    return report


def _record(report: ReencodeReport, name: str, failure: str | None) -> None:
    if failure is None:
        report.done.append(name)
    else:
        report.failed[name] = failure
        log.warning("%s: failed, skipped (%s)", name, failure.splitlines()[0])


__all__ = ["ReencodeReport", "output_size", "read_thumos_txt", "reencode_video", "reencode_videos",
           "thumos14_annotations", "write_thumos14"]
