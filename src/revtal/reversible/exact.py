"""Exact (lossless) stream arithmetic: bitwise reconstruction at every α and every dyadic β, storing about the
information the forward pass destroys and nothing more.

Float reconstruction divides by β and subtracts a recomputed branch, so each reverse step amplifies error by
about (α + ‖∂F‖)/β — around Dr²Net's starting point (α=1, β=0.1) the reconstructed activations are garbage.
Here both streams are fixed-point integers and β = p/2^k is dyadic (p odd), which makes every step an exact
integer bijection.

Fixed point. ``X = trunc(2^s_r · x)`` (int64) with one exponent ``s_r`` per row (the last axis: a token of a
transformer) fixed for the whole stage: ``s_r = frac_bits − e_r`` where ``2^e_r`` bounds the row's magnitude at
the stage input, no finer than ``ROW_EXTRA_BITS`` below the largest row. A fixed global step lost the relative
precision of small rows (a LayerScale model's class token starts near 1e-6 while patch tokens are O(1)); a
per-row exponent keeps every row's relative step near 2^-frac_bits.

Information buffer. ``y_i = β·x_{i-1}`` forgets log2(2^k/p) bits per element; after MacKay et al. (2018,
"Reversible Recurrent Neural Networks") those bits go into one non-negative integer per element, ``B``, used as a
stack of mixed-radix digits::

    forward block i                                  reverse block i
    T       = p·X_{i-1} + (B mod p);  B = B div p    T       = Y_i·2^k + (B mod 2^k);  B = B div 2^k
    Y_i     = T div 2^k                              X_{i-1} = T div p;  B = B·p + (T mod p)
    B       = B·2^k + (T mod 2^k)                    Y_{i-1} = X_i − Q(G_i(x_{i-1}))
    X_i     = Q(G_i(x_{i-1})) + Y_{i-1}

with ``Q(v) = trunc(2^s_r·v)`` and ``G_i(x) = F_i(x) + α·x`` evaluated in floating point. Popping a base-p digit
before pushing the k-bit remainder is what makes B grow by log2(2^k/p) bits per step instead of k. Because the
reverse step recomputes G_i from the exactly recovered X_{i-1}, α needs no restriction.

The buffer is int64, so it is bounded: its worst-case value after every operation is known on the host from the
β's alone (no data), and when the next push could exceed 2^63 the full word is set aside and a fresh one begun —
a spill decided before any data exists, so it never synchronises with an accelerator. At the end the last word is
stored in the narrowest integer dtype its bound allows.

Output streams. The stage output ``x_n`` is stored as the float tensor it is returned as (which the next layer
usually keeps anyway) plus the low bits of ``X_n`` a float cannot hold (``b − 23`` for a b-bit integer in
float32, usually none in float64); ``y_n``, which nothing downstream keeps, goes into the buffer whole. Both are
pushed last. So a stage of n branches stores, per element::

    bits = float_bits + packed(k + n·log2(2^k/p) + low_bits(X_n) + bits(Y_n))

(``float_bits`` 32 in float32; ``packed`` rounds up to 64-bit words plus a tail in whole bytes), plus one byte per
row for the exponents. :func:`storage_bits_per_branch` is the per-branch term, log2(1/β): 3.3 bits at
β = 13/128, 0.5 at 179/256, 0 at β = 1. The k bits are a fresh word's first push, which pops nothing.

Gradients treat the rounding as the identity (the straight-through convention), so they are those of the float
network evaluated at the fixed-point activations.

Requirements: the branches must recompute bitwise identically (true on CPU; on CUDA enable deterministic
algorithms, see docs), and ``|x|·2^s_r·p`` must stay below 2^62 (checked once per stage forward; lower
``frac_bits`` if a stage's activations grow by more than about 2^(54 − frac_bits) over its input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from revtal.reversible.simulation import simulating

from revtal.reversible.coupling import Coupling

_INT64_HEADROOM = 2.0**62
_WORD_LIMIT = 1 << 63  # buffer words are non-negative int64 values, below 2^63
# The stated worst case of a simulation: x_n and y_n grow to 2^6 times the largest row of the stage input (the
# README's measurements store 5–11 low bits of x_n at frac_bits 28, i.e. |x_n| up to 2^34 = 2^(28 + 6))
SIMULATED_GROWTH_BITS = 6
ROW_EXTRA_BITS = 16  # a row may get at most this many more fraction bits than the largest row of the stage input
_EXPONENT_LIMIT = 100  # |s_r| bound: 2^±100 is a normal float32, so scaling by it is exact


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


def storage_bits_per_branch(beta: float, max_bits: int = 8) -> float:
    """Information one exact branch step forgets, and so adds to the buffer, per element: log2(2^k/p) = log2(1/β)
    for the dyadic β = p/2^k in use (0 at β = 1)."""
    d = as_dyadic(beta, max_bits)
    return d.bits - math.log2(d.numerator)


@dataclass(frozen=True)
class ExactStorage:
    """What one exact stage forward stored per element, besides one int8 exponent per row: the float output x_n
    (``float_bits``, usually shared with the next layer) and the packed buffer."""

    branches: int
    bits_per_branch: float  # the information limit log2(1/β) of each branch step
    stream_bits: tuple[int, int]  # pushed last: the low bits of X_n its float misses, and all of Y_n
    buffer_bits: int  # what the packed information buffer occupies
    float_bits: int

    @property
    def information_bits(self) -> float:
        """The bits the buffer must hold at the least: every branch's forgotten bits and the output streams' bits."""
        return self.branches * self.bits_per_branch + sum(self.stream_bits)

    @property
    def bits_per_element(self) -> int:
        """Everything one stage call keeps per element: the float output and the buffer."""
        return self.float_bits + self.buffer_bits


# ---------------------------------------------------------------------------------------------- information buffer
_SPILL = 0


class BufferPlan:
    """The host-side bookkeeping of an :class:`InformationBuffer`, which needs no data: the largest value an
    element can hold (``bound``), the words set aside, and the log of operations the reverse walk must mirror.
    On its own it plans storage: ``BufferPlan().push(7)...stored_bits()``."""

    def __init__(self):
        self.bound = 0
        self.spilled = 0
        self.log: list[int] = []  # radix of each push (2^bits) and pop (−base); _SPILL where a word was set aside

    def capacity(self) -> int:
        """Bits a push can add to the current word: the largest c with (bound + 1)·2^c ≤ 2^63."""
        return 63 - self.bound.bit_length()

    def push(self, bits: int) -> int:
        """Account for a push of ``bits`` bits; returns how many low bits stay in the current word — all of them,
        or, when they do not fit, what fits: then the word is set aside and the rest begins a fresh one."""
        kept = min(bits, self.capacity())
        if kept:
            self._grow(kept)
        if kept < bits:
            self.spilled += 1
            self.bound = 0
            self.log.append(_SPILL)
            self._grow(bits - kept)
        return kept

    def _grow(self, bits: int) -> None:
        self.bound = ((self.bound + 1) << bits) - 1
        self.log.append(1 << bits)

    def pop(self, base: int) -> bool:
        """Account for a pop of a base-``base`` digit; False when the buffer is certainly empty (the digit is 0)."""
        nonempty = self.bound > 0
        self.bound //= base
        self.log.append(-base)
        return nonempty

    def tail_pieces(self) -> list[tuple[torch.dtype, int]]:
        """How the last word is stored: (dtype, bit shift) pieces covering its ⌈log2(bound+1)/8⌉ bytes — 8 bytes as
        one int64, fewer as int32/int16/uint8 pieces (signed pieces offset so that every bit is used)."""
        nbytes = (self.bound.bit_length() + 7) // 8
        if nbytes == 8:
            return [(torch.int64, 0)]
        pieces, shift = [], 0
        for size, dtype in ((4, torch.int32), (2, torch.int16), (1, torch.uint8)):
            while nbytes >= size:
                pieces.append((dtype, shift))
                shift += 8 * size
                nbytes -= size
        return pieces

    def stored_bits(self) -> int:
        """Bits per element of the packed buffer: the words set aside plus the last one."""
        return 64 * self.spilled + sum(torch.iinfo(dtype).bits for dtype, _ in self.tail_pieces())


class InformationBuffer:
    """One non-negative integer per element holding mixed-radix digits, last in first out.

    ``push(digits, bits)`` appends a base-2^bits digit, ``pop(base)`` removes a digit of any base (an empty
    buffer yields 0); ``unpush``/``unpop`` undo them in reverse order. A push that could pass 2^63 — decided by
    the :class:`BufferPlan` before any data exists, so it never synchronises with an accelerator — fills the
    current word with its low bits, sets the word aside and begins a fresh one with the rest; the reverse walk
    joins the two parts and brings the word back at the same point. So words are full but for the fraction of a
    bit a pop can leave.
    """

    def __init__(self):
        self.plan = BufferPlan()
        self.value: Tensor | None = None  # None while certainly zero
        self.words: list[Tensor] = []

    def push(self, digits: Tensor, bits: int) -> None:
        if bits == 0:
            return
        kept = self.plan.push(bits)
        if kept == bits:
            self._append(digits, bits)
            return
        if kept:
            self._append(digits & ((1 << kept) - 1), kept)
        self.words.append(self.value)
        self.value = None
        self._append(digits >> kept, bits - kept)

    def _append(self, digits: Tensor, bits: int) -> None:
        self.value = digits if self.value is None else (self.value << bits) + digits

    def pop(self, base: int) -> Tensor | None:
        """The next base-``base`` digit, or None when every digit would be 0."""
        if not self.plan.pop(base):
            return None
        quotient = torch.div(self.value, base, rounding_mode="floor")
        digits = self.value - quotient * base
        self.value = quotient
        return digits

    def unpush(self, bits: int) -> Tensor:
        self._restore_spilled()
        log = self.plan.log
        top = log.pop().bit_length() - 1 if log and log[-1] > 0 else -1
        if not 0 < top <= bits:
            raise RuntimeError("exact reversible backward does not mirror its forward (information buffer order)")
        digits = self._take(top)
        if top == bits:
            return digits
        # a split push: its high part began this word, its low part ended the word set aside before it
        if not log or log.pop() != _SPILL:
            raise RuntimeError("exact reversible backward does not mirror its forward (information buffer split)")
        self.value = self.words.pop()
        self._expect(1 << (bits - top))
        return (digits << (bits - top)) | self._take(bits - top)

    def _take(self, bits: int) -> Tensor:
        digits = self.value & ((1 << bits) - 1)
        self.value = self.value >> bits
        return digits

    def unpop(self, digits: Tensor, base: int) -> None:
        self._expect(-base)
        self.value = digits if self.value is None else self.value * base + digits

    def _restore_spilled(self) -> None:
        log = self.plan.log
        while log and log[-1] == _SPILL:
            log.pop()
            self.value = self.words.pop()  # all pushed since the spill has been taken back: the current word is 0

    def _expect(self, radix: int) -> None:
        self._restore_spilled()
        log = self.plan.log
        if not log or log.pop() != radix:
            raise RuntimeError("exact reversible backward does not mirror its forward (information buffer order)")

    def pack(self) -> list[Tensor]:
        """The tensors to save (spilled words as int64, the last word in as many bytes as its bound needs); empties
        the buffer."""
        tail = []
        for dtype, shift in self.plan.tail_pieces():
            bits = torch.iinfo(dtype).bits
            piece = self.value if dtype == torch.int64 else (self.value >> shift) & ((1 << bits) - 1)
            tail.append((piece - _piece_offset(dtype)).to(dtype))
        packed, self.words, self.value = [*self.words, *tail], [], None
        return packed

    def unpack(self, packed: list[Tensor]) -> None:
        pieces = self.plan.tail_pieces()
        self.words = list(packed[: len(packed) - len(pieces)])
        self.value = None
        for (dtype, shift), piece in zip(pieces, packed[len(packed) - len(pieces):]):
            piece = (piece.to(torch.int64) + _piece_offset(dtype)) << shift
            self.value = piece if self.value is None else self.value + piece


def _piece_offset(dtype: torch.dtype) -> int:
    return 1 << (torch.iinfo(dtype).bits - 1) if dtype in (torch.int16, torch.int32) else 0


# ---------------------------------------------------------------------------------------------- stream arithmetic
@dataclass
class ExactTape:
    """What one forward call of a stage keeps for its backward besides the saved tensors: the row exponents'
    scales, the buffer's bookkeeping, and the widths of the output streams' low bits."""

    scale: Tensor  # 2^s_r per row, float32, shape (..., 1)
    inv_scale: Tensor
    buffer: InformationBuffer
    exponents: Tensor | None = None  # s_r as int8: what is saved
    peak: Tensor | None = None
    low_bits: tuple[int, int] = (0, 0)  # bits pushed for X_n (its low bits) and Y_n (all of it)
    float_dtype: torch.dtype = torch.float32
    branches: int = 0
    bits_per_branch: float = 0.0


def _pow2(exponents: Tensor) -> Tensor:
    """2^e exactly, as float32, for integer e in [-126, 127] (built from the bit pattern: no exp2 rounding)."""
    return ((exponents.to(torch.int32) + 127) << 23).view(torch.float32)


class ExactArithmetic:
    """Fixed-point streams (int64, per-row scale 2^s_r) with dyadic β and an information buffer: lossless inverse."""

    exact = True
    name = "exact"

    def __init__(self, frac_bits: int = 28, beta_bits: int = 8):
        if not 8 <= frac_bits <= 52:
            raise ValueError(f"frac_bits must be in [8, 52], got {frac_bits}")
        self.frac_bits = int(frac_bits)
        self.beta_bits = int(beta_bits)
        # without values (fake tensors, the meta device: revtal.reversible.simulation) the magnitudes of x_n and y_n
        # that size the buffer are unknown: a simulation takes them as 2^(frac_bits + g) − 1 for these g, or, when
        # simulated_low_bits is set, stores those widths (ExactStorage.stream_bits) as a real forward measured them
        self.simulated_growth_bits: tuple[int, int] = (SIMULATED_GROWTH_BITS, SIMULATED_GROWTH_BITS)
        self.simulated_low_bits: tuple[int, int] | None = None
        self.last_storage: ExactStorage | None = None  # of the latest memory-free forward, for reports

    def storage_bits_per_branch(self, c: Coupling) -> float:
        return storage_bits_per_branch(c.beta, self.beta_bits)

    def check(self, c: Coupling) -> None:
        as_dyadic(c.beta, self.beta_bits)

    # ------------------------------------------------------------------------------------------------ forward
    def begin(self, x0: Tensor, c: Coupling) -> tuple[Tensor, Tensor, ExactTape]:
        d = as_dyadic(c.beta, self.beta_bits)
        exponents = self._row_exponents(x0)
        scale = _pow2(exponents)
        tape = ExactTape(scale=scale, inv_scale=_pow2(-exponents), buffer=InformationBuffer(), exponents=exponents)
        tape.float_dtype = _float_dtype(x0)
        tape.bits_per_branch = storage_bits_per_branch(c.beta, self.beta_bits)
        x = self._quantize(x0, tape, d.numerator)
        # y_0's remainder is not kept: the reverse walk ends at x_0, which it recovers exactly
        y = x if c.input == "duplicate" else (x * d.numerator) >> d.bits
        return x, y, tape

    def _row_exponents(self, x0: Tensor) -> Tensor:
        magnitude = x0.detach().abs().float()
        row = magnitude.amax(-1, keepdim=True) if magnitude.ndim else magnitude
        top = row.amax()
        row_exp = torch.frexp(row).exponent  # row < 2^e
        top_exp = torch.frexp(top).exponent
        row_exp = torch.where(row > 0, row_exp, top_exp)
        row_exp = torch.clamp(torch.maximum(row_exp, top_exp - ROW_EXTRA_BITS), max=top_exp)
        return (self.frac_bits - row_exp).clamp(-_EXPONENT_LIMIT, _EXPONENT_LIMIT).to(torch.int8)

    def _quantize(self, v: Tensor, tape: ExactTape, numerator: int = 1) -> Tensor:
        """Q(v) = trunc(2^s_r·v) as int64 (truncation, not rounding: exactness only needs the same integer in forward
        and backward, and it saves a pass). The range is checked once per stage forward (:meth:`finish`)."""
        scaled = v * tape.scale
        if v.numel():
            peak = scaled.detach().abs().amax().float() * float(max(numerator, 1))  # (vector_norm(inf): 30× slower)
            tape.peak = peak if tape.peak is None else torch.maximum(tape.peak, peak)
        return scaled.to(torch.int64)

    def view(self, x: Tensor, like: Tensor, tape: ExactTape) -> Tensor:
        return x.to(tape.float_dtype) * tape.inv_scale

    def advance(self, x: Tensor, y: Tensor, g: Tensor, c: Coupling, tape: ExactTape) -> tuple[Tensor, Tensor]:
        d = as_dyadic(c.beta, self.beta_bits)
        x_next = self._quantize(g, tape, d.numerator) + y
        tape.branches += 1
        t = x
        if d.numerator != 1:
            t = x * d.numerator
            digits = tape.buffer.pop(d.numerator)
            if digits is not None:
                t = t + digits
        if d.bits == 0:
            return x_next, t
        tape.buffer.push(t & ((1 << d.bits) - 1), d.bits)
        return x_next, t >> d.bits

    def finish(self, x: Tensor, y: Tensor, tape: ExactTape) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The float outputs and the tensors to save (x_n's float output, row exponents, the buffer); refuses a forward whose streams could have left the int64
        range (or that met a non-finite value). The one host synchronisation of a stage forward."""
        levels = [tape.peak if tape.peak is not None else torch.zeros((), device=x.device)]
        levels += [s.abs().amax().to(levels[0].dtype) if s.numel() else torch.zeros_like(levels[0]) for s in (x, y)]
        levels = torch.stack([v.double() for v in levels])
        tape.peak = None
        simulated = simulating(levels)
        if simulated:  # no values: no range check, buffer sized for the stated worst case
            peak = 0.0
            top_x, top_y = (2.0 ** (self.frac_bits + bits) - 1 for bits in self.simulated_growth_bits)
        else:
            peak, top_x, top_y = levels.tolist()
        del levels
        if not math.isfinite(peak):
            raise FloatingPointError("non-finite activation entering the exact reversible stream")
        if peak * 2 >= _INT64_HEADROOM:
            excess = math.ceil(math.log2(peak * 2 / _INT64_HEADROOM)) + 1
            raise OverflowError(
                f"exact reversible stream would overflow int64: |x|·2^s·p reaches 2^{math.log2(peak):.1f} with "
                f"frac_bits={self.frac_bits}; lower frac_bits (e.g. {max(8, self.frac_bits - excess)})"
            )
        # x_n is kept as the float output (which the next layer usually keeps anyway) plus the low bits the float
        # misses; y_n, not needed downstream, goes into the buffer whole. Both offset to be non-negative.
        mantissa = 52 if tape.float_dtype == torch.float64 else 23  # stored significand bits
        tape.low_bits = (_low_bits(top_x, mantissa), math.frexp(top_y)[1] + 1)
        if simulated and self.simulated_low_bits is not None:
            tape.low_bits = tuple(self.simulated_low_bits)
        out_x, out_y = self.view(x, x, tape), self.view(y, y, tape)
        x_bits, y_bits = tape.low_bits
        if x_bits:
            tape.buffer.push(x - self._float_part(out_x, tape) + (1 << (x_bits - 1)), x_bits)
        tape.buffer.push(y + (1 << (y_bits - 1)), y_bits)
        self.last_storage = ExactStorage(
            branches=tape.branches, bits_per_branch=tape.bits_per_branch, stream_bits=tape.low_bits,
            buffer_bits=tape.buffer.plan.stored_bits(), float_bits=8 * out_x.element_size(),
        )
        saved = [out_x, tape.exponents, *tape.buffer.pack()]
        tape.exponents = None
        return out_x, out_y, saved

    def _float_part(self, out: Tensor, tape: ExactTape) -> Tensor:
        return (out * tape.scale).to(torch.int64)  # exact: out·2^s_r is the float image of the integer stream

    # ----------------------------------------------------------------------------------------------- backward
    def resume(self, saved: list[Tensor], tape: ExactTape) -> tuple[Tensor, Tensor]:
        out_x, exponents, packed = saved[0], saved[1], saved[2:]
        tape.scale, tape.inv_scale = _pow2(exponents), _pow2(-exponents.to(torch.int32))
        tape.buffer.unpack(packed)
        x_bits, y_bits = tape.low_bits
        y = tape.buffer.unpush(y_bits) - (1 << (y_bits - 1))
        x = self._float_part(out_x.detach(), tape)
        if x_bits:
            x = x + tape.buffer.unpush(x_bits) - (1 << (x_bits - 1))
        return x, y

    def recover_input(self, x: Tensor, y: Tensor, residue: ExactTape, c: Coupling) -> Tensor:
        d = as_dyadic(c.beta, self.beta_bits)
        buffer = residue.buffer
        t = y if d.bits == 0 else (y << d.bits) + buffer.unpush(d.bits)
        if d.numerator == 1:
            return t
        x_prev = torch.div(t, d.numerator, rounding_mode="floor")
        buffer.unpop(t - x_prev * d.numerator, d.numerator)
        return x_prev

    def recover_y(self, x: Tensor, g: Tensor, tape: ExactTape, overwrite: bool = False) -> Tensor:
        quantized = (g * tape.scale).to(torch.int64)
        return x.sub_(quantized) if overwrite else x - quantized



def _float_dtype(like: Tensor) -> torch.dtype:
    return like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32


def _low_bits(top: float, mantissa: int) -> int:
    """Bits of ``X − float(X)`` (offset to be non-negative) for integers |X| ≤ top: a b-bit integer is within one
    float spacing, 2^(b−1−mantissa), of its float image."""
    b = math.frexp(top)[1]  # top < 2^b
    return 0 if b <= mantissa + 1 else b - mantissa
