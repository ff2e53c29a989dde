"""Exact (lossless) stream arithmetic: bitwise reconstruction at every α and every dyadic β.

Float reconstruction divides by β and subtracts a recomputed branch, so each reverse step amplifies error by
about (α + ‖∂F‖)/β — around Dr²Net's starting point (α=1, β=0.1) the reconstructed activations are garbage.
Here both streams are fixed-point integers ``X = trunc(2^s · x)`` (int64) and β = p/2^k is dyadic, which makes
every step an exact integer bijection::

    forward block i                                  reverse block i
    P   = p·X_{i-1}                                  P       = Y_i·2^k + R_i
    Y_i = P >> k     (floor)                         X_{i-1} = P / p                    (exact division)
    R_i = P − Y_i·2^k  (k bits, stored)              Y_{i-1} = X_i − trunc(2^s·G_i(x_{i-1}))
    X_i = trunc(2^s·G_i(x_{i-1})) + Y_{i-1}

with ``x = X / 2^s`` in the compute dtype and ``G_i(x) = F_i(x) + α·x`` evaluated in floating point. Because the
reverse step recomputes G_i from the exactly recovered X_{i-1}, α needs no restriction: it only enters G, and G
is recomputed deterministically. The price is k bits per element per block for the remainders R_i (stored in
the narrowest integer dtype) and int64 storage of the two output streams.

Gradients treat the rounding as the identity (the straight-through convention), so they are those of the float
network evaluated at the fixed-point activations.

Requirements: the branches must recompute bitwise identically (true on CPU; on CUDA enable deterministic
algorithms, see docs), and |x|·2^s·p must stay below 2^62 (checked on every step; lower ``frac_bits`` if a model's
activations are huge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from revtal.reversible.coupling import Coupling

_INT64_HEADROOM = 2.0**62


@dataclass(frozen=True)
class Dyadic:
    """β = numerator / 2^bits with an odd numerator (or bits = 0)."""

    numerator: int
    bits: int

    @property
    def value(self) -> float:
        return self.numerator / (1 << self.bits)

    def __str__(self) -> str:
        return f"{self.numerator}/2^{self.bits}"


def nearest_dyadic(beta: float, max_bits: int = 8) -> Dyadic:
    """The dyadic rational p/2^k (k ≤ max_bits) nearest to ``beta``, in lowest terms."""
    if not beta > 0:
        raise ValueError(f"exact reversible arithmetic needs beta > 0, got {beta}")
    if not 0 <= max_bits <= 30:
        raise ValueError(f"max_bits must be in [0, 30], got {max_bits}")
    numerator = round(beta * (1 << max_bits))
    if numerator == 0:
        raise ValueError(
            f"beta={beta} rounds to 0 with {max_bits} fractional bits; the smallest representable beta is "
            f"1/2^{max_bits}: raise beta_bits"
        )
    bits = max_bits
    while bits > 0 and numerator % 2 == 0:
        numerator //= 2
        bits -= 1
    return Dyadic(numerator, bits)


def as_dyadic(beta: float, max_bits: int) -> Dyadic:
    """``beta`` as an exact dyadic with at most ``max_bits`` bits, or a ValueError naming the nearest one."""
    d = nearest_dyadic(beta, max_bits)
    if d.value != beta:
        raise ValueError(
            f"exact backprop needs a dyadic beta = p/2^k with k <= {max_bits}; {beta} is not one "
            f"(nearest: {d} = {d.value}). Set coefficients with revtal.set_coefficients, which rounds beta for "
            "exact stages, or raise beta_bits."
        )
    return d


def _remainder_dtype(bits: int) -> torch.dtype:
    if bits <= 8:
        return torch.uint8
    if bits <= 15:
        return torch.int16
    return torch.int32


class ExactArithmetic:
    """Fixed-point streams (int64, scale 2^frac_bits) with dyadic β: lossless inverse."""

    exact = True
    name = "exact"

    def __init__(self, frac_bits: int = 32, beta_bits: int = 8):
        if not 8 <= frac_bits <= 52:
            raise ValueError(f"frac_bits must be in [8, 52], got {frac_bits}")
        self.frac_bits = int(frac_bits)
        self.beta_bits = int(beta_bits)
        self._scale = float(2**self.frac_bits)
        self._inv_scale = float(2.0**-self.frac_bits)
        self._peak: Tensor | None = None

    def remainder_bits(self, c: Coupling) -> int:
        """Bits of storage per element per block for the remainders (0 when β = 1/2^0...)."""
        d = as_dyadic(c.beta, self.beta_bits)
        return 0 if d.bits == 0 else torch.iinfo(_remainder_dtype(d.bits)).bits

    def check(self, c: Coupling) -> None:
        as_dyadic(c.beta, self.beta_bits)

    def quantize(self, v: Tensor, numerator: int = 1) -> Tensor:
        """2^s · v as int64 (truncated). The range is checked once per stage forward (:meth:`finish_forward`) rather than
        here, so a GPU forward does not synchronise with the host on every branch."""
        if v.numel():
            peak = v.detach().abs().amax().float() * float(max(numerator, 1))
            self._peak = peak if self._peak is None else torch.maximum(self._peak, peak)
        return self._to_fixed(v)

    def _to_fixed(self, v: Tensor) -> Tensor:
        # truncation toward zero, not rounding: exactness only needs the same integer in forward and backward, and
        # this saves a pass over the tensor (the quantisation step stays 2^-s)
        return (v * self._scale).to(torch.int64)

    def start_forward(self) -> None:
        self._peak = None

    def finish_forward(self) -> None:
        """Refuse a forward whose streams could have left the int64 range (or that met a non-finite value)."""
        peak, self._peak = (float(self._peak) if self._peak is not None else 0.0), None
        if not math.isfinite(peak):
            raise FloatingPointError("non-finite activation entering the exact reversible stream")
        if peak * self._scale * 2 >= _INT64_HEADROOM:
            safe = max(8, int(math.log2(_INT64_HEADROOM / (2 * peak))) - 1)
            raise OverflowError(
                f"exact reversible stream would overflow int64: |x|·p reaches {peak:.3g} with frac_bits="
                f"{self.frac_bits}; lower frac_bits (e.g. {safe})"
            )

    def view(self, x: Tensor, like: Tensor) -> Tensor:
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        return x.to(dtype) * self._inv_scale

    def begin(self, x0: Tensor, c: Coupling) -> tuple[Tensor, Tensor]:
        d = as_dyadic(c.beta, self.beta_bits)
        x = self.quantize(x0, d.numerator)
        y = x if c.input == "duplicate" else (x * d.numerator) >> d.bits
        return x, y

    def advance(self, x: Tensor, y: Tensor, g: Tensor, c: Coupling) -> tuple[Tensor, Tensor, Tensor | None]:
        d = as_dyadic(c.beta, self.beta_bits)
        x_next = self.quantize(g, d.numerator) + y
        scaled = x * d.numerator if d.numerator != 1 else x
        y_next = scaled >> d.bits
        if d.bits == 0:
            return x_next, y_next, None
        remainder = (scaled - (y_next << d.bits)).to(_remainder_dtype(d.bits))
        return x_next, y_next, remainder

    def recover_input(self, x: Tensor, y: Tensor, residue: Tensor | None, c: Coupling) -> Tensor:
        d = as_dyadic(c.beta, self.beta_bits)
        scaled = y << d.bits
        if residue is not None:
            scaled = scaled + residue.to(torch.int64)
        if d.numerator == 1:
            return scaled
        return torch.div(scaled, d.numerator, rounding_mode="trunc")

    def recover_y(self, x: Tensor, g: Tensor) -> Tensor:
        return x - self._to_fixed(g)
