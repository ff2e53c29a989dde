"""Tensors without values: the one switch between a real run and a simulated one.

``revtal plan`` runs training steps on fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``) or the meta
device to measure memory at paper scale. Such tensors have shapes, dtypes and storages but no values, so every read
of a value on the host (``.item()``, ``.tolist()``, ``bool(t)``) fails on them. The few places of the reversible
engine that read values (safety checks and exact mode's range check) ask :func:`simulating` and, for a tensor
without values, skip the check or use a stated worst case instead; what a real run computes is unchanged.
"""

from __future__ import annotations

from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor


def simulating(tensor: Tensor) -> bool:
    """True when ``tensor`` has no values to read: a fake tensor or a tensor on the meta device."""
    return isinstance(tensor, FakeTensor) or tensor.is_meta


def autocast_device_type(device) -> str:
    """The autocast device type of ``device``'s tensors: a meta tensor stands for a CPU one (autocast has no meta
    backend)."""
    return "cpu" if device.type == "meta" else device.type
