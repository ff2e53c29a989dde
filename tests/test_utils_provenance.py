import subprocess
import shutil
from pathlib import Path

import pytest

from revtal.utils import provenance


def test_source_commit_names_the_checkout_commit_and_its_modified_files(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    package = tmp_path / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    run = lambda *args: subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    run("init", "-q")
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", package)
    assert provenance.read_source_commit() == {"commit": head, "modified": []}
    (package / "a.py").write_text("x = 2\n")
    assert provenance.read_source_commit() == {"commit": head, "modified": ["src/pkg/a.py"]}


def test_source_commit_is_none_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", Path(tmp_path))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance.read_source_commit() is None


def test_the_source_is_read_once_per_process(monkeypatch):
    reads = iter([{"commit": "a", "modified": []}, {"commit": "b", "modified": []}])
    monkeypatch.setattr(provenance, "read_source_commit", lambda: next(reads))
    provenance.source_commit.cache_clear()
    try:
        assert provenance.source_commit()["commit"] == "a"
        assert provenance.source_commit()["commit"] == "a"  # a commit landing later is not this process's source
    finally:
        provenance.source_commit.cache_clear()
