"""Atomic writes leave no stray temporary file behind and give the result ordinary permissions."""

import os
import stat
import subprocess
import sys

import pytest

from revtal.utils.io import atomic_write, remove_stray_temporaries


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_get_the_permissions_of_an_ordinary_file(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "best.pt", lambda fh: fh.write(b"x"))
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "best.pt") == _mode(tmp_path / "plain") == 0o644


def test_umask_is_read_without_being_changed(monkeypatch):
    from revtal.utils import io

    old = os.umask(0o027)
    try:
        calls = []
        real = os.umask
        monkeypatch.setattr(io.os, "umask", lambda mask: calls.append(mask) or real(mask))
        assert io.current_umask() == 0o027
        # read from /proc/self/status: the process-wide mask was never set to something else meanwhile
        assert calls == []
    finally:
        os.umask(old)


def test_replacing_a_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "predictions.json"
    target.write_text("{}")
    os.chmod(target, 0o640)
    atomic_write(target, lambda fh: fh.write("[]"), binary=False)
    assert target.read_text() == "[]" and _mode(target) == 0o640


def _killed_writer_leftover(directory) -> str:
    """Start a writer in another process and SIGKILL it in the middle of the write."""
    script = (
        "import os, signal, sys\n"
        "from revtal.utils.io import atomic_write\n"
        "def write(fh):\n"
        "    fh.write(b'half a checkpoint'); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        f"atomic_write({str(directory / 'last.pt')!r}, write)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == -9
    (leftover,) = [name for name in os.listdir(directory) if name.endswith(".tmp")]
    return leftover


def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    leftover = _killed_writer_leftover(tmp_path)
    assert leftover.startswith(".last.pt.")
    # an old-style leftover (no pid in the name) of another target, and an unrelated dot-file that must stay
    (tmp_path / ".best.pt.ab12cd_9.tmp").write_bytes(b"old")
    (tmp_path / ".notes.tmp").write_bytes(b"mine")
    atomic_write(tmp_path / "last.pt", lambda fh: fh.write(b"complete"))
    assert (tmp_path / "last.pt").read_bytes() == b"complete"
    assert sorted(os.listdir(tmp_path)) == [".best.pt.ab12cd_9.tmp", ".notes.tmp", "last.pt"]
    assert [p.name for p in remove_stray_temporaries(tmp_path)] == [".best.pt.ab12cd_9.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".notes.tmp", "last.pt"]


def test_a_temporary_of_a_running_writer_is_left_alone(tmp_path):
    live = tmp_path / f".last.pt.{os.getppid()}.abcdefgh.tmp"  # our parent process is alive
    live.write_bytes(b"being written")
    assert remove_stray_temporaries(tmp_path) == []
    assert live.exists()


def test_a_failed_write_removes_its_temporary(tmp_path):
    def fail(fh):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "eval.json", fail)
    assert os.listdir(tmp_path) == []


def test_a_full_or_read_only_disk_is_one_line_naming_the_target(tmp_path, monkeypatch):
    import errno

    import torch

    from revtal.utils.io import disk_error_message

    def full_disk(fh):  # what torch.save raises when the device fills up mid-write
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "last.pt"
    with pytest.raises(OSError) as error:
        atomic_write(target, full_disk)
    assert error.value.filename == str(target) and not list(tmp_path.iterdir())
    assert disk_error_message(error.value) == (
        f"cannot write {target}: No space left on device; free space or choose another output directory (--out)")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/whatever/.last.pt.1.abcdefgh.tmp")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(OSError) as error:
        atomic_write(target, lambda fh: torch.save({}, fh))
    assert disk_error_message(error.value) == (
        f"cannot write {target}: Read-only file system; choose a writable output directory (--out)")


def test_a_file_size_limit_is_reported_as_too_large_naming_the_target(tmp_path):
    import subprocess
    import sys

    script = (
        "import resource, signal, sys; from revtal.utils.io import atomic_write, disk_error_message\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        f"try: atomic_write({str(tmp_path / 'big.bin')!r}, lambda fh: fh.write(bytes(100000)))\n"
        "except OSError as err: print(disk_error_message(err))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == f"cannot write {tmp_path / 'big.bin'}: File too large; free space or choose another output directory (--out)"
