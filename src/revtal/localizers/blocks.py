"""Masked 1D building blocks of the ActionFormer encoder.

All tensors are channels-first ``(B, C, T)`` with a boolean validity mask ``(B, 1, T)``: padded positions are kept at
zero after every layer, so a video padded to a longer length produces the same features on its valid part as far as
convolutions and attention can see (attention never looks at padded keys).

Downsampling by ``s`` uses kernels of size ``s + 1`` (3 at stride 1) with "same" padding, so output position ``i``
is centred on input position ``i * s``; the mask is downsampled by taking every ``s``-th entry, which is the same
nearest-neighbour rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def downsample_mask(mask: Tensor, stride: int) -> Tensor:
    return mask[..., ::stride] if stride > 1 else mask


class MaskedConv1d(nn.Module):
    """Conv1d whose output is zeroed outside the (downsampled) validity mask."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, bias: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"MaskedConv1d needs an odd kernel size to stay centred, got {kernel_size}")
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=bias)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out_mask = downsample_mask(mask, self.stride)
        out = self.conv(x)
        if out.shape[-1] != out_mask.shape[-1]:
            raise ValueError(f"MaskedConv1d: length {x.shape[-1]} is not divisible by stride {self.stride}")
        return out * out_mask.to(out.dtype), out_mask


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of a (B, C, T) tensor."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        variance = centred.pow(2).mean(dim=1, keepdim=True)
        return centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole sample with probability ``p`` (rescaled when kept)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0 or not self.training:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class LayerScale(nn.Module):
    """Learnable per-channel scale on a residual branch (ActionFormer's release starts it at 1e-4)."""

    def __init__(self, channels: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, channels, 1), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class MaskedWindowAttention(nn.Module):
    """Multi-head self-attention over a local window (or globally), with optional ×s downsampling.

    Queries, keys and values first pass a depthwise (strided) masked conv and a LayerNorm, then 1×1 projections.
    With ``window_size`` w > 0 each query attends to the keys at offsets ``-(w//2) .. w//2`` around it; ``w <= 0``
    means global attention. Padded keys are never attended to.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, stride: int = 1, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        if window_size > 0 and window_size % 2 != 1:
            raise ValueError(f"attention window size must be odd (centred on the query), got {window_size}")
        self.num_heads, self.window_size = num_heads, window_size
        kernel = stride + 1 if stride > 1 else 3
        self.query_conv = MaskedConv1d(dim, dim, kernel, stride=stride, groups=dim, bias=False)
        self.key_conv = MaskedConv1d(dim, dim, kernel, stride=stride, groups=dim, bias=False)
        self.value_conv = MaskedConv1d(dim, dim, kernel, stride=stride, groups=dim, bias=False)
        self.query_norm, self.key_norm, self.value_norm = ChannelLayerNorm(dim), ChannelLayerNorm(dim), ChannelLayerNorm(dim)
        self.query = nn.Conv1d(dim, dim, 1)
        self.key = nn.Conv1d(dim, dim, 1)
        self.value = nn.Conv1d(dim, dim, 1)
        self.proj = nn.Conv1d(dim, dim, 1)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, H, T, D)
        batch, channels, length = x.shape
        return x.view(batch, self.num_heads, channels // self.num_heads, length).transpose(2, 3)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        q, out_mask = self.query_conv(x, mask)
        k, _ = self.key_conv(x, mask)
        v, _ = self.value_conv(x, mask)
        q = self._heads(self.query(self.query_norm(q)))
        k = self._heads(self.key(self.key_norm(k)))
        v = self._heads(self.value(self.value_norm(v)))
        q = q * (1.0 / math.sqrt(q.shape[-1]))
        key_valid = out_mask  # (B, 1, T')
        fill = torch.finfo(q.dtype).min  # not -inf: fully padded query rows must stay finite (they are zeroed later)

        if self.window_size > 0:
            half = self.window_size // 2
            k_windows = F.pad(k, (0, 0, half, half)).unfold(2, self.window_size, 1)  # (B, H, T', D, w)
            v_windows = F.pad(v, (0, 0, half, half)).unfold(2, self.window_size, 1)
            valid_windows = F.pad(key_valid.to(torch.uint8), (half, half)).unfold(2, self.window_size, 1).bool()  # (B, 1, T', w)
            scores = torch.einsum("bhtd,bhtdw->bhtw", q, k_windows).masked_fill(~valid_windows, fill)
            attention = self.attn_drop(scores.softmax(dim=-1))
            out = torch.einsum("bhtw,bhtdw->bhtd", attention, v_windows)
        else:
            scores = (q @ k.transpose(-2, -1)).masked_fill(~key_valid[:, :, None, :], fill)
            attention = self.attn_drop(scores.softmax(dim=-1))
            out = attention @ v
        batch, heads, length, head_dim = out.shape
        out = out.transpose(2, 3).reshape(batch, heads * head_dim, length)
        out = self.proj_drop(self.proj(out)) * out_mask.to(out.dtype)
        return out, out_mask


class TransformerBlock(nn.Module):
    """Pre-LN transformer block with masked local attention; ``stride`` > 1 downsamples (max-pool on the skip)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, stride: int = 1, mlp_ratio: int = 4,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, drop_path: float = 0.0, layer_scale_init: float | None = 1e-4):
        super().__init__()
        self.norm_attn = ChannelLayerNorm(dim)
        self.attn = MaskedWindowAttention(dim, num_heads, window_size, stride, attn_drop, proj_drop)
        self.skip = nn.MaxPool1d(stride + 1, stride=stride, padding=(stride + 1) // 2) if stride > 1 else nn.Identity()
        self.norm_mlp = ChannelLayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Conv1d(dim, dim * mlp_ratio, 1), nn.GELU(), nn.Dropout(proj_drop), nn.Conv1d(dim * mlp_ratio, dim, 1), nn.Dropout(proj_drop)
        )
        scale = (lambda: LayerScale(dim, layer_scale_init)) if layer_scale_init is not None else nn.Identity
        self.scale_attn, self.scale_mlp = scale(), scale()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        attended, out_mask = self.attn(self.norm_attn(x), mask)
        valid = out_mask.to(x.dtype)
        out = self.skip(x) * valid + self.drop_path(self.scale_attn(attended))
        out = out + self.drop_path(self.scale_mlp(self.mlp(self.norm_mlp(out)) * valid))
        return out, out_mask
