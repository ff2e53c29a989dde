"""Progress that suits where it is read: a live bar on a terminal, one plain line per finished loop elsewhere.

A tqdm bar redraws itself with carriage returns; written to a log file or a CI console every redraw stays, and a
``make demo > log 2>&1`` collected about 1 MB of them. :func:`progress` therefore returns a tqdm bar only when
stderr is a terminal and otherwise a :class:`LineProgress`, which takes the same calls and prints one line when the
loop ends: what it did, how many items, how long, and the last postfix (e.g. the loss).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator

from tqdm import tqdm


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, disable: bool = False,
             leave: bool = True, stream=None, **options: Any):
    """A tqdm bar on a terminal, a :class:`LineProgress` elsewhere (``stream``: where it writes, default stderr)."""
    stream = sys.stderr if stream is None else stream
    if disable or _is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, disable=disable, leave=leave, file=stream,
                    dynamic_ncols=True, **options)
    return LineProgress(iterable, desc=desc, total=total, leave=leave, stream=stream, unit=options.get("unit", "it"))


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """The calls of a tqdm bar (iteration, ``update``, ``set_postfix``, ``set_description``, ``close``, ``write``)
    with one line of output, written when the loop ends; ``leave=False`` writes nothing (a transient bar)."""

    write = staticmethod(tqdm.write)

    def __init__(self, iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 leave: bool = True, stream=None, unit: str = "it"):
        self.iterable, self.desc, self.leave, self.unit = iterable, desc, leave, unit
        self.total = total if total is not None or iterable is None else _length(iterable)
        self.stream = sys.stderr if stream is None else stream
        self.n = 0
        self.postfix = ""
        self.start = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{key}={_short(value)}" for key, value in values.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.leave:
            return
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        line = f"{self.desc + ': ' if self.desc else ''}{count} {self.unit} in {time.perf_counter() - self.start:.1f}s"
        print(line + (f", {self.postfix}" if self.postfix else ""), file=self.stream, flush=True)


def _length(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
