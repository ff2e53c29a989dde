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
