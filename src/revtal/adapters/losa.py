"""LoSA: long- and short-range adapters that learn next to a frozen video backbone.

End-to-end finetuning of a large video backbone for temporal action localization (TAL) runs out of memory because
every layer's activations must be kept for backward. LoSA never backpropagates through the backbone: the backbone
runs frozen under ``torch.no_grad()`` over the video as consecutive clips of ``clip_frames`` frames, and small
adapters *beside* it read its intermediate feature maps (detached) and learn to enrich the last layer's features.

For a video cut into ``n`` clips, with selected backbone layers ``i`` (shallow → deep) and last layer ``N``:

* ``F_N`` (B, n·T_N, C): the backbone's own pooled output per clip (``backbone.pool`` of its final map — exactly
  what head-only transfer feeds the localizer), concatenated in time; with ``dim`` ≠ the backbone width it is first
  mapped to ``dim`` by a learnable linear ``last_projection``.
* Adapters are lightweight (the paper's "memory-and-parameter efficient" design; its Tab. 2 counts LoSA's learnable
  parameters at 12 M beside SlowFast-101's 62 M and 143 M beside ViT-g's 1012 M): they work at a width
  d = ``bottleneck``·C (default C/4). ``bottleneck=1`` is the wide variant with every adapter at C.
* Reduction: a convolutional block per layer turns the map (C_i, T_i, H_i, W_i) into a sequence (T_i, d): a spatial
  (1, k, k) convolution, LayerNorm, GELU, spatial mean, and the projection C_i → d (``reduce`` picks a depthwise
  separable or a full convolution, or plain pooling).
* Short-range adapter (per layer): multi-head cross-attention whose queries are one clip's layer-i sequence and whose
  keys/values are the last-layer features ``F_N`` of all clips (``short_context="clip"``: of that clip only); keys
  and values are projected C → d inside the attention and its output d → C, so FS_i has the width of ``F_N``.
* Long-range adapter (per layer): multi-head cross-attention whose queries are the layer-i sequences of the whole
  video concatenated in time, keys/values ``F_N``.
* Fusion (``fusion="gated"``): ``FS = Σ_i p_i^short·FS_i``, ``FL = Σ_i p_i^long·FL_i`` (each FS_i / FL_i first
  resampled per clip from T_i to T_N steps by a learnable linear map over time where the lengths differ), and
  ``FT = Proj([FS + F_N, FL + F_N])`` with Proj: 2C → C.

Identity at initialisation. The gates start at zero and Proj acts as ``[½·I, ½·I]`` with zero bias, so
``FT = ½·(F_N + F_N) = F_N`` — *bitwise*: ``p·x`` is ±0 for finite x, ``F_N ± 0 = F_N``, and doubling then halving
is exact in binary floating point. To keep that exact on every device (TF32 or bf16 matmuls would round ``½·F_N``),
Proj is stored as the fixed ``[½·I, ½·I]`` plus a learnable zero-initialised correction ``delta`` and bias: the
effective weight ``[½·I, ½·I] + delta`` is an arbitrary 2C × C matrix, so this is the same function class and the
same gradients as an ``nn.Linear(2C, C)`` initialised to ``[½·I, ½·I]`` (only weight decay differs: it pulls towards
``[½·I, ½·I]`` instead of towards 0). With ``dim`` ≠ backbone width, "exactly" means ``FT`` equals the projected
last-layer features ``last_projection(F_N)`` bitwise (the projection itself is learnable and random).

The gate gradient at initialisation is ``<∂L/∂FS, FS_i>``, non-zero, while the adapters' own gradients are zero
(they are multiplied by the zero gates): the first step opens the gates, then the adapters learn.

Ablations: ``use_short`` / ``use_long`` drop a branch (its half of Proj's input is then ``F_N`` alone);
``fusion="sum"`` drops gates and Proj: ``FT = F_N + Σ_i FS_i + Σ_i FL_i``; ``gate_init`` "one" / "random"
(uniform in [0, 1)) start the gates elsewhere, "cosine" replaces the learnable gates by the cosine similarity between
each adapter output and ``F_N`` (per video, averaged over time); ``layers`` picks the adapted layers: "all",
"deeper" / "shallower" half, or explicit indices into the backbone's intermediate list (negative allowed).

Beyond the paper's text (documented choices): a sinusoidal encoding of each feature's centre time, in frames, is
added to queries and keys (``position_encoding``); without it attention sees the video as an unordered set of steps
and, with ``short_context="video"``, the short- and long-range adapters would compute the same function class (a
per-query softmax does not care how queries are batched into clips).

Memory: nothing of the backbone is saved for backward; the adapters save their own inputs (each selected layer's map
for the reduction convolution) and activations, so activation memory grows with the number of adapted layers, not
with backbone depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from revtal.adapters.frozen_backbone import (  # noqa: F401 — LAYER_SETS re-exported
    LAYER_SETS, AdapterConfig, FrozenBackboneAdapter, bottleneck_width, clips_to_sequence, sequence_to_clips,
)
from revtal.adapters.frozen_backbone import resolve_layers as _resolve_layers
from revtal.backbones.backbone import VideoBackbone
from revtal.reversible.replay import checkpoint_layer

FUSIONS = ("gated", "sum")
GATE_INITS = ("zero", "one", "random", "cosine")
REDUCTIONS = ("separable", "full", "pool")
SHORT_CONTEXTS = ("video", "clip")


@dataclass
class LoSAConfig(AdapterConfig):
    """Every LoSA choice. Defaults follow the paper; see the module docstring for the maths."""

    method = "LoSA"

    clip_frames: int = 16  # frames per backbone clip; the video length must be a multiple
    dim: int | None = None  # feature width C of F_N and FT; None: the backbone's out_channels (FT = F_N bitwise at init)
    # adapter width d = bottleneck·C (a multiple of heads): reductions project C_i → d, the cross-attention runs at d
    # with keys/values projected C → d, and its output goes back up d → C. 1.0: the wide variant (d = C, no down/up)
    bottleneck: float = 0.25
    heads: int = 4
    layers: str | list[int] = "all"  # "all" | "deeper" | "shallower" | indices into the intermediate layers
    use_short: bool = True
    use_long: bool = True
    fusion: str = "gated"  # "gated" | "sum" (no gates, no projection)
    gate_init: str = "zero"  # "zero" | "one" | "random" | "cosine" (data-dependent weights, not learnable)
    short_context: str = "video"  # short-range keys/values: "video" (all clips) | "clip" (the query's own clip)
    reduce: str = "separable"  # "separable": depthwise (1,k,k) conv + pointwise C_i→C | "full" conv | "pool"
    reduce_kernel: int = 3  # spatial kernel k of the reduction convolution (odd)
    position_encoding: bool = True  # sinusoidal encoding of frame time added to queries and keys
    attn_dropout: float = 0.0
    dropout: float = 0.0  # on each adapter's output
    clip_batch: int | None = None  # clips per backbone call (bounds the no-grad peak); None: all at once
    # the reduction's convolution, LayerNorm and GELU are recomputed in backward from the layer map it keeps anyway
    # (the same values and gradients, bitwise); False keeps their full-size inputs (two more maps per layer) instead
    recompute_reduction: bool = True
    probe_size: int = 64  # spatial size of the one probe clip used to discover layer shapes (non-ViT backbones)
    in_channels: int = 3  # video channels of the probe clip

    def __post_init__(self) -> None:
        self.check_layers()
        self.check_choice("fusion", FUSIONS)
        self.check_choice("gate_init", GATE_INITS)
        self.check_choice("short_context", SHORT_CONTEXTS)
        self.check_choice("reduce", REDUCTIONS)
        self.check_positive_int("clip_frames", "heads", "probe_size", "in_channels", "reduce_kernel")
        self.check_positive_int("dim", "clip_batch", optional=True)
        if self.reduce_kernel % 2 == 0:
            raise ValueError(f"LoSAConfig.reduce_kernel must be odd (centred 'same' padding), got {self.reduce_kernel}")
        self.check_fraction("bottleneck")  # adapter width / feature width
        self.check_fraction("attn_dropout", low_open=False)
        self.check_fraction("dropout", low_open=False)
        if not (self.use_short or self.use_long):
            raise ValueError(
                "LoSAConfig: use_short and use_long are both False — LoSA without adapters is head-only transfer; "
                "use the frozen backbone directly for that baseline"
            )


@dataclass
class LoSAOutput:
    """``fused`` (B, C, T_feat) goes to the localizer; the rest is for inspection and tests."""

    fused: Tensor
    last: Tensor  # F_N (B, C, T_feat), after last_projection when dim differs from the backbone width
    short: list[Tensor] = field(default_factory=list)  # FS_i (B, C, T_feat) per adapted layer, before gating
    long: list[Tensor] = field(default_factory=list)  # FL_i (B, C, T_feat)
    gates_short: Tensor | None = None  # the weights used: (L,) learnable gates or (B, L) cosine weights
    gates_long: Tensor | None = None


class LoSA(FrozenBackboneAdapter):
    """A frozen ``VideoBackbone`` plus long/short-range adapters; usable wherever a backbone is: ``forward(video
    (B, C, T, H, W)) -> (B, out_channels, T / temporal_stride)``."""

    def __init__(self, backbone: VideoBackbone, config: LoSAConfig | None = None):
        config = config or LoSAConfig()
        super().__init__(backbone, config.clip_frames, probe_size=config.probe_size, in_channels=config.in_channels)
        self.config = config

        layer_channels, layer_lengths, last_length = self.probe_layers()
        self.num_backbone_layers = len(layer_channels)
        self.layer_indices = resolve_layers(config.layers, self.num_backbone_layers)
        self.last_length = last_length  # T_N per clip
        self.temporal_stride = self.check_temporal_stride(last_length, "LoSAConfig")
        self.out_channels = dim = config.dim or backbone.out_channels
        if dim % config.heads:
            raise ValueError(f"LoSAConfig: adapter width dim={dim} is not divisible by heads={config.heads}")
        self.last_projection = nn.Linear(backbone.out_channels, dim) if dim != backbone.out_channels else None
        self.adapter_dim = adapter_dim = adapter_width(dim, config.bottleneck, config.heads)

        self.reducers = nn.ModuleList()
        self.short_adapters = nn.ModuleList()
        self.long_adapters = nn.ModuleList()
        self.layer_lengths = []
        for index in self.layer_indices:
            channels, length = layer_channels[index], layer_lengths[index]
            self.layer_lengths.append(length)
            self.reducers.append(SpatialReducer(channels, adapter_dim, config.reduce, config.reduce_kernel,
                                                config.recompute_reduction))
            for enabled, adapters in ((config.use_short, self.short_adapters), (config.use_long, self.long_adapters)):
                if enabled:
                    adapters.append(CrossRangeAdapter(adapter_dim, dim, config.heads, length, last_length, config))
        num = len(self.layer_indices)
        self.fusion = GatedFusion(dim, num, config) if config.fusion == "gated" else None

    def features(self, video: Tensor) -> LoSAOutput:
        clips, n = self.cut_clips(video)
        batch = video.shape[0]
        pooled, layer_maps = self.frozen_features(clips, self.layer_indices, self.config.clip_batch)
        last = clips_to_sequence(pooled.transpose(1, 2), batch, n).contiguous()  # (B, n·T_N, C_out)
        if self.last_projection is not None:
            last = self.last_projection(last)
        last_time = clip_time_positions(self.last_length, n, self.clip_frames, last.device)[None]  # (1, n·T_N)
        last_per_clip, last_time_per_clip = None, None
        if self.config.use_short and self.config.short_context == "clip":
            last_per_clip = sequence_to_clips(last, n)  # (B·n, T_N, C)
            last_time_per_clip = last_time.view(n, self.last_length).repeat(batch, 1)  # row b·n + j is clip j

        short, long = [], []
        short_adapters, long_adapters = iter(self.short_adapters), iter(self.long_adapters)
        for reducer, length, layer_map in zip(self.reducers, self.layer_lengths, layer_maps):
            query_per_clip = reducer(layer_map)  # (B·n, T_i, C)
            query = clips_to_sequence(query_per_clip, batch, n)  # (B, n·T_i, C)
            query_time = clip_time_positions(length, n, self.clip_frames, query.device)[None]
            if self.config.use_short:
                adapter = next(short_adapters)
                if last_per_clip is not None:
                    per_clip_time = query_time.view(n, length).repeat(batch, 1)
                    out = adapter(query_per_clip, per_clip_time, last_per_clip, last_time_per_clip)
                    short.append(clips_to_sequence(out, batch, n))
                else:  # every query attends to all clips: batching queries by clip would change nothing
                    short.append(adapter(query, query_time, last, last_time))
            if self.config.use_long:
                long.append(next(long_adapters)(query, query_time, last, last_time))

        gates_short = gates_long = None
        if self.fusion is not None:
            fused, gates_short, gates_long = self.fusion(last, short, long)
        else:
            fused = last
            for out in short + long:
                fused = fused + out
        channels_first = lambda x: x.transpose(1, 2)  # noqa: E731 — the localizer's (B, C, T) layout
        return LoSAOutput(
            fused=channels_first(fused), last=channels_first(last), short=[channels_first(x) for x in short],
            long=[channels_first(x) for x in long], gates_short=gates_short, gates_long=gates_long,
        )

    def forward(self, video: Tensor) -> Tensor:
        return self.features(video).fused

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"layers={self.layer_indices} of {self.num_backbone_layers}, dim={self.out_channels}, "
            f"adapter_dim={self.adapter_dim}, heads={c.heads}, "
            f"clip_frames={c.clip_frames}, short={c.use_short}, long={c.use_long}, fusion={c.fusion}, "
            f"gate_init={c.gate_init}"
        )


# -------------------------------------------------------------------------------------------------- components
class SpatialReducer(nn.Module):
    """Layer map (N, C_i, T_i, H_i, W_i) → sequence (N, T_i, C): space is convolved, then averaged away.

    ``recompute``: the convolution's weight gradient needs the layer map, so backward keeps that map in any case;
    the LayerNorm and GELU would keep two more maps of the same size (float32 under CUDA autocast, where the map is
    16-bit: 4× its bytes; 30 GiB for ViT-g/14 over a THUMOS video). With ``recompute`` they run under checkpointing
    and backward recomputes them one layer at a time from the map: the same ops on the same values."""

    def __init__(self, in_channels: int, dim: int, kind: str, kernel: int, recompute: bool = True):
        super().__init__()
        self.kind = kind
        self.recompute = recompute
        pad = (0, kernel // 2, kernel // 2)
        size = (1, kernel, kernel)
        if kind == "separable":
            self.conv = nn.Conv3d(in_channels, in_channels, size, padding=pad, groups=in_channels)
            self.norm = nn.LayerNorm(in_channels)
            self.project = nn.Linear(in_channels, dim)
        elif kind == "full":
            self.conv = nn.Conv3d(in_channels, dim, size, padding=pad)
            self.norm = nn.LayerNorm(dim)
            self.project = None
        else:  # pool
            self.conv = self.norm = None
            self.project = nn.Linear(in_channels, dim)

    def forward(self, layer_map: Tensor) -> Tensor:
        if self.conv is None:
            x = layer_map.mean((-2, -1)).transpose(1, 2)
        elif self.recompute and torch.is_grad_enabled() and self.conv.weight.requires_grad:
            x = checkpoint_layer(self.convolve, layer_map, modules=[self.conv, self.norm])
        else:
            x = self.convolve(layer_map)
        return self.project(x) if self.project is not None else x

    def convolve(self, layer_map: Tensor) -> Tensor:
        """Convolution, LayerNorm, GELU, spatial mean: (N, C_i, T, H, W) → (N, T, C)."""
        x = F.gelu(self.norm(self.conv(layer_map).permute(0, 2, 3, 4, 1)))  # channels last (N, T, H, W, C)
        return x.mean((2, 3))


class CrossRangeAdapter(nn.Module):
    """Multi-head cross-attention at the adapter width d from one layer's sequence (queries, width d) to the last
    layer's (keys/values, width C, projected to d by the attention), its output projected back up to C when d < C,
    then a per-clip linear resampling T_i → T_N when the layer's temporal length differs from the last layer's."""

    def __init__(self, dim: int, context_dim: int, heads: int, query_length: int, last_length: int, config: LoSAConfig):
        super().__init__()
        self.position_encoding = config.position_encoding
        self.query_norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(context_dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=config.attn_dropout, batch_first=True,
                                               kdim=context_dim, vdim=context_dim)
        self.up = nn.Linear(dim, context_dim) if dim != context_dim else None
        self.dropout = nn.Dropout(config.dropout)
        self.resample = TemporalResample(query_length, last_length) if query_length != last_length else None

    def forward(self, query: Tensor, query_time: Tensor, context: Tensor, context_time: Tensor) -> Tensor:
        """query (N, Lq, d) at frame times ``query_time`` (1 or N, Lq); context (N, Lk, C) at ``context_time``;
        returns (N, Lq or its resampled length, C)."""
        q = self.query_norm(query)
        kv = self.context_norm(context)
        k = kv
        if self.position_encoding:
            q = q + frame_time_encoding(query_time, q.shape[-1]).to(q.dtype).expand_as(q)
            k = k + frame_time_encoding(context_time, k.shape[-1]).to(k.dtype).expand_as(k)
        out, _ = self.attention(q, k, kv, need_weights=False)
        if self.up is not None:
            out = self.up(out)
        out = self.dropout(out)
        return self.resample(out) if self.resample is not None else out


class TemporalResample(nn.Module):
    """Learnable linear map over time, applied per clip: (B, n·T_in, C) → (B, n·T_out, C). Initialised to area
    interpolation (output step j averages the input steps it overlaps, weighted by overlap), so it starts as a plain
    pooling / stretching of the sequence and depends only on the clip, not the video length."""

    def __init__(self, in_length: int, out_length: int):
        super().__init__()
        self.in_length, self.out_length = in_length, out_length
        self.weight = nn.Parameter(area_weights(in_length, out_length))

    def forward(self, x: Tensor) -> Tensor:
        b, length, c = x.shape
        if length % self.in_length:
            raise ValueError(f"TemporalResample: length {length} is not whole clips of {self.in_length} steps")
        clips = length // self.in_length
        per_clip = x.reshape(b, clips, self.in_length, c)
        return torch.einsum("ji,bnic->bnjc", self.weight.to(x.dtype), per_clip).reshape(b, clips * self.out_length, c)


class FusionProjection(nn.Module):
    """Proj: 2C → C, ``Proj([a, b]) = [½·I, ½·I]·[a; b] + delta·[a; b] + bias``, delta and bias learnable and zero at
    the start. The fixed half is applied as ``½·(a + b)`` elementwise so the identity start is bitwise on any
    device (see the module docstring)."""

    def __init__(self, dim: int):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(dim, 2 * dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    @property
    def weight(self) -> Tensor:
        """The effective (C, 2C) weight."""
        dim = self.bias.shape[0]
        eye = torch.eye(dim, dtype=self.delta.dtype, device=self.delta.device)
        return torch.cat([eye, eye], 1) * 0.5 + self.delta

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return 0.5 * (a + b) + F.linear(torch.cat([a, b], -1), self.delta, self.bias)


class GatedFusion(nn.Module):
    """FT = Proj([Σ p_i^short·FS_i + F_N, Σ p_i^long·FL_i + F_N]) on (B, T, C) sequences."""

    def __init__(self, dim: int, num_layers: int, config: LoSAConfig):
        super().__init__()
        self.mode = config.gate_init
        self.use_short, self.use_long = config.use_short, config.use_long
        if self.mode != "cosine":
            self.gates_short = nn.Parameter(initial_gates(self.mode, num_layers)) if config.use_short else None
            self.gates_long = nn.Parameter(initial_gates(self.mode, num_layers)) if config.use_long else None
        self.projection = FusionProjection(dim)

    def _weights(self, gates: Tensor | None, outputs: list[Tensor], last: Tensor) -> Tensor:
        if self.mode == "cosine":  # (B, L): similarity of each adapter output to F_N, averaged over time
            return torch.stack([F.cosine_similarity(out, last, dim=-1).mean(-1) for out in outputs], -1)
        return gates

    def forward(
        self, last: Tensor, short: list[Tensor], long: list[Tensor]
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        short_in, long_in = last, last
        w_short = w_long = None
        if self.use_short:
            w_short = self._weights(getattr(self, "gates_short", None), short, last)
            short_in = _weighted_sum(w_short, short) + last
        if self.use_long:
            w_long = self._weights(getattr(self, "gates_long", None), long, last)
            long_in = _weighted_sum(w_long, long) + last
        return self.projection(short_in, long_in), w_short, w_long


# ---------------------------------------------------------------------------------------------------- helpers
def resolve_layers(layers: str | Sequence[int], num_layers: int) -> list[int]:
    """Adapted layer indices (ascending, non-negative) among ``num_layers`` intermediate layers (see
    :func:`revtal.adapters.frozen_backbone.resolve_layers`)."""
    return _resolve_layers(layers, num_layers, "LoSAConfig")


def adapter_width(dim: int, bottleneck: float, heads: int) -> int:
    """d = bottleneck·dim rounded to a multiple of ``heads`` (at least ``heads``, at most ``dim``)."""
    return bottleneck_width(dim, bottleneck, heads)


def initial_gates(mode: str, num: int) -> Tensor:
    if mode == "zero":
        return torch.zeros(num)
    if mode == "one":
        return torch.ones(num)
    if mode == "random":
        return torch.rand(num)
    raise ValueError(f"no learnable gates for gate_init={mode!r}")


def area_weights(in_length: int, out_length: int) -> Tensor:
    """(out, in) matrix of area interpolation: row j holds the overlap of input step i with output step j, in units
    of output steps (rows sum to 1). Computed with exact fractions."""
    weights = torch.zeros(out_length, in_length, dtype=torch.float64)
    for j in range(out_length):
        lo, hi = Fraction(j, out_length), Fraction(j + 1, out_length)
        for i in range(in_length):
            overlap = min(hi, Fraction(i + 1, in_length)) - max(lo, Fraction(i, in_length))
            if overlap > 0:
                weights[j, i] = float(overlap * out_length)
    return weights.to(torch.float32)


def clip_time_positions(steps_per_clip: int, clips: int, clip_frames: int, device: torch.device) -> Tensor:
    """Centre time, in frames from the video start, of each step of a layer with ``steps_per_clip`` steps per clip:
    (clips·steps_per_clip,). Places every layer (and the last) on one time axis."""
    step = clip_frames / steps_per_clip
    within = (torch.arange(steps_per_clip, device=device, dtype=torch.float32) + 0.5) * step
    starts = torch.arange(clips, device=device, dtype=torch.float32)[:, None] * clip_frames
    return (starts + within).reshape(-1)


def frame_time_encoding(times: Tensor, dim: int) -> Tensor:
    """Sinusoidal encoding (…, dim) of real-valued times: channel 2k = sin(t / 10000^(2k/dim)), 2k+1 = cos."""
    exponent = torch.arange(0, dim, 2, device=times.device, dtype=torch.float32) / dim
    angle = times[..., None].float() / torch.pow(10000.0, exponent)
    encoding = torch.stack([torch.sin(angle), torch.cos(angle)], -1).flatten(-2)
    return encoding[..., :dim]


def _weighted_sum(weights: Tensor, outputs: list[Tensor]) -> Tensor:
    """Σ_i w_i·x_i with w (L,) scalars or (B, L) per video."""
    total = None
    for i, out in enumerate(outputs):
        w = weights[i] if weights.ndim == 1 else weights[:, i, None, None]
        term = w.to(out.dtype) * out
        total = term if total is None else total + term
    return total


__all__ = [
    "CrossRangeAdapter", "FusionProjection", "GatedFusion", "LoSA", "LoSAConfig", "LoSAOutput", "SpatialReducer",
    "TemporalResample", "adapter_width", "area_weights", "clip_time_positions", "frame_time_encoding", "resolve_layers",
]
