"""Making the backward recompute of a residual branch see exactly what its forward saw.

A reversible backward re-runs each branch F_i. For the recomputed activations (and so the gradients) to be those of
the forward pass, three pieces of ambient state must be replayed:

* random numbers — dropout and drop-path must draw the same masks: the CPU (and CUDA) generator state is captured
  before each branch runs forward and restored inside a forked RNG scope for the recompute, so the global stream
  is left untouched (masks still differ between iterations, and a fixed seed still reproduces a run);
* autocast — the recompute runs under the autocast state of the forward;
* BatchNorm running statistics — a training-mode recompute would update them a second time; they are snapshotted
  and restored around the recompute so each training step updates them exactly once;
* torch-function modes — autograd runs backward without the ``TorchFunctionMode``s active around the forward (such
  as ``revtal plan``'s CUDA-autocast emulation), so a recompute re-enters the ones the forward ran under.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import _get_current_function_mode_stack


@dataclass(frozen=True)
class AutocastState:
    device_type: str
    enabled: bool
    dtype: torch.dtype | None

    @classmethod
    def capture(cls, device_type: str) -> "AutocastState":
        enabled = torch.is_autocast_enabled(device_type)
        return cls(device_type, enabled, torch.get_autocast_dtype(device_type) if enabled else None)

    def scope(self):
        if not self.enabled:
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(self.device_type, dtype=self.dtype)


@dataclass(frozen=True)
class FunctionModes:
    """The torch-function modes active at capture, re-entered by :meth:`scope` (a no-op when there were none)."""

    modes: tuple = ()

    @classmethod
    def capture(cls) -> "FunctionModes":
        return cls(tuple(_get_current_function_mode_stack()))

    @contextlib.contextmanager
    def scope(self):
        if not self.modes or tuple(_get_current_function_mode_stack()) == self.modes:
            yield
            return
        with contextlib.ExitStack() as stack:
            for mode in self.modes:
                stack.enter_context(mode)
            yield


def replaying_function_modes():
    """``context_fn`` of ``torch.utils.checkpoint``: the recompute runs under the forward's torch-function modes."""
    return contextlib.nullcontext(), FunctionModes.capture().scope()


@dataclass
class RngState:
    cpu: Tensor
    cuda_device: int | None
    cuda: Tensor | None

    @classmethod
    def capture(cls, device: torch.device) -> "RngState":
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            return cls(torch.get_rng_state(), index, torch.cuda.get_rng_state(index))
        return cls(torch.get_rng_state(), None, None)

    @contextlib.contextmanager
    def restored(self):
        devices = [] if self.cuda_device is None else [self.cuda_device]
        with torch.random.fork_rng(devices=devices, enabled=True, device_type="cuda"):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.cuda_device)
            yield


def batchnorm_modules(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def statistics_unchanged(norms: list[_BatchNorm]):
    """Run the body with every training-mode BatchNorm updating its running statistics by momentum 0, then put
    ``num_batches_tracked`` back: a recompute then leaves the statistics as the first run left them. Nothing is
    written into the running statistics after the body, so the tensors BatchNorm saved for its backward keep their
    version and the body's backward may run later (a reversible branch's, a checkpoint's)."""
    active = [m for m in norms if m.training]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in active]
    try:
        for m in active:
            m.momentum = 0.0  # running = (1 − 0)·running + 0·batch: the same values
        yield
    finally:
        for m, (momentum, count) in zip(active, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def checkpoint_layer(layer: Callable, *args, modules: Iterable[nn.Module] | None = None, **kwargs):
    """``layer(*args, **kwargs)`` under non-reentrant ``torch.utils.checkpoint`` (it keeps only its inputs and
    recomputes in backward), also for layers holding BatchNorm: the recompute runs under
    :func:`statistics_unchanged`, so running statistics are updated once per forward, as without checkpointing.
    ``modules``: the modules ``layer`` runs (default: ``layer`` itself, a module)."""
    norms = [n for m in (modules if modules is not None else [layer]) for n in batchnorm_modules(m)]
    calls = 0

    def run(*a, **k):
        nonlocal calls
        calls += 1
        if calls == 1 or not norms:
            return layer(*a, **k)
        with statistics_unchanged(norms):
            return layer(*a, **k)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, context_fn=replaying_function_modes,
                                             **kwargs)
