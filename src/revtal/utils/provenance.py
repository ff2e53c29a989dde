"""Which source a measurement ran: the git commit of the revtal checkout, when there is one.

Benchmark and plan JSON record it beside the machine, so a figure in docs/ can be traced to the code that printed
it (an installed wheel has no checkout: ``None``).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


@functools.cache
def source_commit() -> dict | None:
    """:func:`read_source_commit`, read once per process: the CLI reads it when a bench or plan command starts, so
    a commit landing during a long run is not recorded as the source that run imported."""
    return read_source_commit()


def read_source_commit() -> dict | None:
    """``{"commit": <full hash>, "modified": <source files differing from it>}`` of the checkout revtal is imported
    from, or ``None`` outside a git checkout (or without git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(_PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.rstrip("\n")
    try:
        commit = git("rev-parse", "HEAD").strip()
        modified = [line[3:] for line in git("status", "--porcelain", "--", str(_PACKAGE_DIR)).splitlines() if line]
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "modified": modified}
