"""ST-Adapter (Pan et al., NeurIPS 2022) inside a frozen video ViT, repurposed for TAL as LoSA Tab. 2 does.

An ST-Adapter is a bottleneck on the token stream with a depthwise 3-D convolution in the middle:

    x ← x + W_up · DWConv3D(W_down · x)

``W_down``: C → r, the tokens of a clip laid out on their (T', H', W') grid, a depthwise convolution (kernel
``kernel`` = (3, 1, 1) by default: mixing over time only, per channel) and ``W_up``: r → C. The authors' public
implementation initialises the convolution's weight and bias and both projections' biases to zero, so every adapter
is exactly the identity at the start (``x + W_up·0 + 0``): the model *is* the pretrained backbone until the first
step. It has no nonlinearity between the projections (the convolution is what the adapter adds); we follow it.

Placement: before each block's attention (``position="attn"``, the authors' one-adapter-per-block setting with
r = C/2, e.g. 384 for ViT-B) or also before its MLP (``"both"``); ``layers`` picks the blocks (default all).

Repurposed for TAL (the backbone is a joint space-time video ViT, VideoMAE-style, so the adapter's grid is the
tubelet grid rather than per-frame patches of an image model; there is no class token to skip): the video is cut
into clips of ``clip_frames`` frames, each clip runs through the adapted backbone, and the pooled per-step features
of all clips, concatenated in time, go to the localizer — exactly the head-only feature path, with adapters inside.

Memory: the adapters sit in the residual stream, so the gradient of every adapter below block k passes through
blocks k…N: autograd keeps every block's activations (attention inputs, MLP hidden layer, …) although no backbone
weight learns. This is what LoSA Tab. 2 reports as out of memory on ViT-g.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from revtal.adapters.frozen_backbone import AdapterConfig, InBlockAdapter, bottleneck_width
from revtal.backbones.backbone import VideoBackbone

POSITIONS = ("attn", "mlp", "both")


@dataclass
class STAdapterConfig(AdapterConfig):
    """ST-Adapter's choices; defaults follow the authors' ViT-B setting (one adapter per block, width C/2)."""

    method = "ST-Adapter"

    clip_frames: int = 16  # frames per backbone clip (the ViT's own clip length)
    bottleneck: float = 0.5  # adapter width r / backbone width C (384 / 768 for ViT-B)
    kernel: list[int] = field(default_factory=lambda: [3, 1, 1])  # depthwise conv kernel (t, h, w), odd sizes
    position: str = "attn"  # before each block's attention | before its MLP | both
    layers: str | list[int] = "all"  # blocks that get adapters: "all" | "deeper" | "shallower" | indices

    def __post_init__(self) -> None:
        self.check_positive_int("clip_frames")
        self.check_fraction("bottleneck")
        self.check_choice("position", POSITIONS)
        self.check_layers()
        kernel = self.kernel
        if (not isinstance(kernel, (list, tuple)) or len(kernel) != 3
                or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 and k % 2 for k in kernel)):
            raise ValueError(f"STAdapterConfig.kernel must be three odd positive sizes (t, h, w), got {kernel!r}")
        self.kernel = [int(k) for k in kernel]


class STAdapterModule(nn.Module):
    """One adapter: tokens (N, T'·H'·W', C) of clips on a (T', H', W') grid → the same tokens plus the adapter's
    change."""

    def __init__(self, dim: int, width: int, kernel: tuple[int, int, int]):
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.conv = nn.Conv3d(width, width, kernel, padding=tuple(k // 2 for k in kernel), groups=width)
        self.up = nn.Linear(width, dim)
        for zero in (self.conv.weight, self.conv.bias, self.down.bias, self.up.bias):
            nn.init.zeros_(zero)

    def forward(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        n, _, _ = tokens.shape
        t, h, w = grid
        x = self.down(tokens)
        x = x.reshape(n, t, h, w, -1).permute(0, 4, 1, 2, 3)  # channels first for the convolution
        x = self.conv(x).permute(0, 2, 3, 4, 1).reshape(n, t * h * w, -1)
        return tokens + self.up(x)


class STAdapter(InBlockAdapter):
    """A frozen video ViT with an ST-Adapter before the attention (and/or MLP) of each selected block."""

    def __init__(self, backbone: VideoBackbone, config: STAdapterConfig | None = None):
        config = config or STAdapterConfig()
        super().__init__(backbone, config.clip_frames, config.layers, "STAdapterConfig")
        self.config = config
        self.width = width = bottleneck_width(self.embed_dim, config.bottleneck)
        kernel = tuple(config.kernel)
        self.pre_attn = config.position in ("attn", "both")
        self.pre_mlp = config.position in ("mlp", "both")
        self.adapters = nn.ModuleDict()
        for index in self.layer_indices:
            slots = nn.ModuleDict()
            if self.pre_attn:
                slots["attn"] = STAdapterModule(self.embed_dim, width, kernel)
            if self.pre_mlp:
                slots["mlp"] = STAdapterModule(self.embed_dim, width, kernel)
            self.adapters[str(index)] = slots

    def run_block(self, index: int, block: nn.Module, tokens: Tensor) -> Tensor:
        slots = self.adapters[str(index)] if str(index) in self.adapters else {}
        x = tokens
        if "attn" in slots:
            x = slots["attn"](x, self.grid)
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
        if "mlp" in slots:
            x = slots["mlp"](x, self.grid)
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    def extra_repr(self) -> str:
        c = self.config
        return (f"blocks={self.layer_indices} of {self.num_blocks}, width={self.width}, kernel={tuple(c.kernel)}, "
                f"position={c.position}, clip_frames={c.clip_frames}")


__all__ = ["STAdapter", "STAdapterConfig", "STAdapterModule"]
