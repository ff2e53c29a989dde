"""Atomic file writes: a temporary file in the target's directory, fsynced, then renamed over the target, so a crash
mid-write never leaves a truncated checkpoint or results file behind.

The temporary file is named ``.<target name>.<writer pid>.<random>.tmp``. A writer killed mid-write (SIGKILL, power
loss) cannot remove its own; :func:`remove_stray_temporaries` removes those whose writer is no longer running (and
those of the older ``.<name>.<random>.tmp`` form, which carry no pid), and every write calls it for its own target,
so a resumed run leaves no stray file behind. The result gets the permissions of an ordinary new file (0666 minus
the umask) or keeps those of the file it replaces, not the 0600 of a temporary file.

A write that fails because of the storage (read-only, full, over quota, file too large) raises an ``OSError`` that
names the target (:func:`disk_error_message` is the one line the command line prints for it).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable

# ".<name>.<pid>.<random>.tmp" (this module) or ".<name>.<random>.tmp" (revtal before the pid was added);
# tempfile's random part is 8 characters of [a-z0-9_]
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError as err:
        return err.errno != errno.ESRCH
    return True


def remove_stray_temporaries(directory: str | os.PathLike, target_name: str | None = None) -> list[Path]:
    """Remove the temporary files that interrupted :func:`atomic_write` calls left in ``directory`` (only those of
    ``target_name`` when given); a file whose writer process is still running is left alone. Returns the removed
    paths."""
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or (target_name is not None and match["name"] != target_name):
            continue
        if match["pid"] is not None and _process_alive(int(match["pid"])):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:  # removed by someone else meanwhile
            pass
    return removed


def _new_file_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)  # replacing a file keeps its permissions
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process umask, read without changing it where the kernel reports it (Linux ≥ 4.7): setting and
    restoring it is process-wide, so a file another thread creates in between would get mode 0o666."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o077)  # fallback: briefly the strictest mask, never a permissive one
    os.umask(umask)
    return umask


# errors of the storage rather than of the path: the same command works with another output directory or disk
DISK_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def disk_error_message(err: OSError) -> str:
    """One line for a storage error: the path (where the error carries one), the reason and what to do."""
    where = f"cannot write {err.filename}" if err.filename else "cannot write the output"
    reason = os.strerror(err.errno) if err.errno else str(err)
    if err.errno == errno.EROFS:
        return f"{where}: {reason}; choose a writable output directory (--out)"
    return f"{where}: {reason}; free space or choose another output directory (--out)"


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
    path = Path(path)
    try:
        _atomic_write(path, write, binary)
    except OSError as err:
        if err.errno in DISK_ERRNOS:  # named after the target, not its temporary file
            raise OSError(err.errno, os.strerror(err.errno), str(path)) from err
        raise


def _atomic_write(path: Path, write: Callable[[IO], None], binary: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stray_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``Path.write_text`` through :func:`atomic_write`: never a truncated file, storage errors naming ``path``."""
    atomic_write(path, lambda fh: fh.write(text), binary=False)
