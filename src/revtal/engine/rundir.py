"""Where commands write, so that no command destroys a run.

* ``revtal train`` writes ``train.out_dir``. A directory that already holds a run (``config.yaml``, ``last.pt``,
  ``best.pt``, ``metrics.csv``, ...) is refused, with a message naming the two ways on: ``--resume OUT/last.pt``
  continues that run, ``--overwrite`` deletes its files and starts afresh. (The synthetic dataset a run generates
  under ``OUT/data`` is a cache, not a result: it is kept.) ``--resume`` with ``--out`` elsewhere continues the run
  in that directory, which must not hold another run.
* ``revtal eval`` writes its own directory (``--out``, by default ``eval/<checkpoint name>`` beside the checkpoint),
  ``revtal extract`` the ``--features`` directory and ``revtal detect`` its ``--out`` directory. Each refuses a
  directory holding results of its own kind unless ``--overwrite``, and none writes into a training run's files.
* A directory whose run never wrote a checkpoint (it failed or was interrupted before its first one) holds nothing
  to protect or resume: its files are moved aside into ``OUT/attempt-N`` and the new run starts.
* One writer per run directory: a training run holds an exclusive lock on ``OUT/.revtal-run.lock`` while it lives.
  A second run into the same directory is refused, naming the process that holds it; the operating system drops
  the lock of a process that died, so a lock file left by a crash is simply taken over.
* Every command that claims a directory first removes the temporary files interrupted writes left there.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from revtal.errors import UserError
from revtal.utils.io import remove_stray_temporaries

# what a training run writes into its directory (and its evaluations, by default: stale once the run is replaced)
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.csv", "eval.json", "predictions.json", "tensorboard", "eval")
CHECKPOINT_FILES = ("last.pt", "best.pt")
LOCK_NAME = ".revtal-run.lock"

log = logging.getLogger(__name__)
_held_locks: dict[Path, int] = {}  # run directory -> the descriptor whose lock this process holds


class RunInUseError(UserError, FileExistsError):
    """Another live process is writing this run directory."""


class OutputExistsError(UserError, FileExistsError):
    """The output directory already holds results; the message says how to continue or replace them."""


def existing_results(directory: str | os.PathLike, names: Iterable[str]) -> list[str]:
    directory = Path(directory)
    return [name for name in names if (directory / name).exists()]


def claim_output_dir(
    directory: str | os.PathLike,
    *,
    results: Sequence[str] | None = None,
    suffix: str | None = None,
    overwrite: bool,
    what: str,
    how: str = "pass --overwrite to replace them, or choose another directory with --out",
    check_only: bool = False,
) -> Path:
    """Create ``directory`` for a command's results. Existing results (the ``results`` names, or files ending in
    ``suffix``) are refused with :class:`OutputExistsError` unless ``overwrite``, which deletes them first.
    ``check_only``: refuse as above but change nothing (the other ranks of a distributed run)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"output path {directory} exists and is not a directory")
    found = existing_results(directory, results or ())
    if suffix is not None and directory.is_dir():
        found += sorted(p.name for p in directory.iterdir() if p.name.endswith(suffix) and not p.name.startswith("."))
    if found and not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise OutputExistsError(f"{directory} already holds {what} ({shown}): {how}")
    if check_only:
        return directory
    for name in found:
        path = directory / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    remove_stray_temporaries(directory)
    return directory


def claim_run_dir(directory: str | os.PathLike, *, resume: bool, overwrite: bool, check_only: bool = False) -> Path:
    """The training run directory: continued (``resume``), replaced (``overwrite``) or new; see the module doc.
    ``check_only`` as for :func:`claim_output_dir`."""
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: pass one of them")
    if resume and check_only:
        return Path(directory)
    if not check_only:
        lock_run_dir(directory)
    if resume:
        remove_stray_temporaries(directory)
        return Path(directory)
    if not check_only and not existing_results(directory, CHECKPOINT_FILES):
        set_aside_failed_attempt(directory)
    return claim_output_dir(
        directory, results=RUN_FILES, overwrite=overwrite, what="a training run",
        how=f"continue it with --resume {Path(directory) / 'last.pt'}, replace it with --overwrite, or train into "
            "another directory with --out",
        check_only=check_only,
    )


def set_aside_failed_attempt(directory: str | os.PathLike) -> Path | None:
    """Move the files of a run that never wrote a checkpoint into ``attempt-N``: its logs stay readable and the
    directory is free for the corrected run."""
    directory = Path(directory)
    found = existing_results(directory, RUN_FILES)
    if not found:
        return None
    number = 1 + max((int(p.name.split("-")[1]) for p in directory.glob("attempt-*") if p.name.split("-")[1].isdigit()),
                     default=0)
    aside = directory / f"attempt-{number}"
    aside.mkdir()
    for name in found:
        os.replace(directory / name, aside / name)
    log.warning("%s held a run that never wrote a checkpoint; its files (%s) were moved to %s", directory,
                ", ".join(found), aside)
    return aside


def lock_run_dir(directory: str | os.PathLike) -> None:
    """Hold the run directory's lock until this process ends (see the module doc); refuses with
    :class:`RunInUseError` when another process holds it. Taking it again in the same process is a no-op."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"output path {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    if key in _held_locks:
        return
    fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 256).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunInUseError(f"{directory} is being written by another revtal run ({holder}): wait for it to end, or "
                            "train into another directory with --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    _held_locks[key] = fd


def release_run_dir(directory: str | os.PathLike) -> None:
    """Give up the lock :func:`lock_run_dir` took (the process's end gives it up too)."""
    fd = _held_locks.pop(Path(directory).resolve(), None)
    if fd is not None:
        os.close(fd)


def default_eval_dir(checkpoint: str | os.PathLike) -> Path:
    """``eval/<checkpoint name>`` beside the checkpoint: ``runs/x/best.pt`` → ``runs/x/eval/best``."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / "eval" / checkpoint.stem


def unique_output_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One output name per input file: its stem, or, where different files share a stem (``a/bikes.mp4``,
    ``b/bikes.mp4``), the stem prefixed with as many parent folders as tell them apart (``a_bikes``, ``b_bikes``);
    a file given twice (or a name still taken) is numbered (``bikes_2``)."""
    resolved = [Path(p).resolve() for p in paths]
    names = [p.stem for p in resolved]
    for stem in set(names):
        distinct = sorted({r for r in resolved if r.stem == stem})
        if len(distinct) < 2:
            continue
        for depth in range(1, max(len(r.parent.parts) for r in distinct) + 1):
            labels = {r: "_".join([*r.parent.parts[-depth:], stem]).lstrip("/_") for r in distinct}
            if len(set(labels.values())) == len(distinct):
                break
        names = [labels.get(r, n) if r.stem == stem else n for r, n in zip(resolved, names)]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique
