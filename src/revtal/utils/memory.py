"""Measuring activation memory without a GPU.

``SavedTensorMeter`` counts the bytes autograd saves for backward while it is active (the activation memory a
training step must hold between forward and backward). Storages are deduplicated (a view and its base count once)
and parameter storages are skipped (they are resident anyway). On CUDA, ``torch.cuda.max_memory_allocated`` is the
complementary process-level measure; :mod:`revtal.bench` reports both.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn


class SavedTensorMeter:
    """``with SavedTensorMeter(model) as meter: loss = model(x)...``; then ``meter.bytes``."""

    def __init__(self, *modules: nn.Module, exclude: Iterable[Tensor] = ()):
        self._skip = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
        self._skip |= {b.untyped_storage().data_ptr() for m in modules for b in m.buffers()}
        self._skip |= {t.untyped_storage().data_ptr() for t in exclude}
        self._storages: dict[int, int] = {}
        self._alive: list[Tensor] = []  # keeps storages alive so addresses are not reused while counting
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        if isinstance(t, nn.Parameter):
            return t
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._skip and ptr not in self._storages:
            self._storages[ptr] = storage.nbytes()
            self._alive.append(t)
        return t

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._alive.clear()


def saved_bytes(fn: Callable[[], object], *modules: nn.Module, exclude: Iterable[Tensor] = ()) -> int:
    """Bytes saved for backward by ``fn()`` (typically a forward pass), parameters skipped."""
    with SavedTensorMeter(*modules, exclude=exclude) as meter:
        out = fn()
    del out
    return meter.bytes
