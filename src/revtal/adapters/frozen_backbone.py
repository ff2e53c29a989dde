"""What every adapter method shares: a frozen video backbone run over a video cut into clips.

Each adapter model (LoSA, UniPT, ST-Adapter, AIM) wraps one :class:`~revtal.backbones.backbone.VideoBackbone` and is
used like one: ``forward(video (B, C, T, H, W)) -> (B, out_channels, T / temporal_stride)``. The video is cut into
consecutive clips of ``clip_frames`` frames (the length a pretrained backbone was trained on); the backbone's weights
never change (``requires_grad=False``, eval mode even under ``.train()``: dropout off, BatchNorm statistics fixed).

Two families differ in *where* the learnable modules sit, and so in what backpropagation must keep:

* **side networks** (LoSA, UniPT; :attr:`FrozenBackboneAdapter.backprop_through_backbone` False): the backbone runs
  under ``torch.no_grad()`` (:meth:`FrozenBackboneAdapter.frozen_features`); the adapters read its detached
  intermediate maps. Nothing of the backbone is saved for backward.
* **in-block adapters** (ST-Adapter, AIM; True): adapters sit inside the backbone's blocks, so the gradient of an
  early adapter passes through every later (frozen) block, and autograd keeps every block's activations although
  no backbone weight learns (:class:`InBlockAdapter`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from revtal.backbones.backbone import VideoBackbone, VideoViTBackbone

LAYER_SETS = ("all", "deeper", "shallower")


class AdapterConfig:
    """Mixin of the adapter config dataclasses: construction from a config-file mapping and the shared checks, with
    errors naming the config class and field."""

    method = "adapter"  # the method's name in messages

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], source: str | None = None):
        """Build from a config-file mapping; unknown keys raise naming ``source`` and the known fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"{source or cls.method + ' options'}: unknown {cls.method} option(s) {unknown}; "
                             f"known: {sorted(known)}")
        return cls(**dict(options))

    def check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ValueError(f"{type(self).__name__}.{name} must be one of {choices}, got {value!r}")

    def check_positive_int(self, *names: str, optional: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if optional and value is None:
                continue
            if not _is_int(value) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")

    def check_fraction(self, name: str, low_open: bool = True) -> None:
        """A ratio in (0, 1] (``low_open``) or a probability in [0, 1)."""
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (0 < value <= 1 if low_open else 0 <= value < 1)
        if not ok:
            interval = "(0, 1]" if low_open else "[0, 1)"
            raise ValueError(f"{type(self).__name__}.{name} must be in {interval}, got {value!r}")

    def check_layers(self, name: str = "layers") -> None:
        layers = getattr(self, name)
        if isinstance(layers, str):
            self.check_choice(name, LAYER_SETS)
            return
        if not isinstance(layers, (list, tuple)) or not layers or not all(_is_int(i) for i in layers):
            raise ValueError(f"{type(self).__name__}.{name} must be one of {LAYER_SETS} or a non-empty list of "
                             f"layer indices, got {layers!r}")
        setattr(self, name, [int(i) for i in layers])


class FrozenBackboneAdapter(nn.Module):
    """Base class: holds the frozen ``backbone``, cuts videos into clips, runs the backbone over them, and says what
    learns. Subclasses build their adapters in ``__init__`` and implement ``forward``."""

    backprop_through_backbone = False

    def __init__(self, backbone: VideoBackbone, clip_frames: int, *, probe_size: int = 64, in_channels: int = 3):
        super().__init__()
        self.backbone = backbone
        backbone.requires_grad_(False)
        backbone.eval()
        self.clip_frames = clip_frames
        self.probe_size = probe_size
        self.in_channels = in_channels

    # -------------------------------------------------------------------------------------------------- structure
    def probe_clip(self) -> Tensor:
        """A zero clip of the size the backbone takes (a ViT accepts only the clip size it was built for)."""
        size = self.probe_size
        if isinstance(self.backbone, VideoViTBackbone):
            size = self.backbone.net.patch_embed.img_size
        return torch.zeros(1, self.in_channels, self.clip_frames, size, size, device=_device_of(self.backbone))

    @torch.no_grad()
    def probe_layers(self) -> tuple[list[int], list[int], int]:
        """(C_i, T_i per clip) of every intermediate layer and T_N per clip of the pooled output, from one zero clip."""
        name = self.backbone.name or type(self.backbone).__name__
        try:
            final, intermediates = self.backbone.forward_features(self.probe_clip(), return_intermediates=True)
        except Exception as error:
            raise ValueError(f"{type(self).__name__}: backbone {name!r} cannot run a clip of "
                             f"clip_frames={self.clip_frames} frames ({error})") from error
        if not intermediates:
            raise ValueError(f"{type(self).__name__}: backbone {name!r} returned no intermediate feature maps")
        last_length = self.backbone.pool(final).shape[-1]
        return [m.shape[1] for m in intermediates], [m.shape[2] for m in intermediates], last_length

    def check_temporal_stride(self, last_length: int, config_name: str) -> int:
        """Frames per output step, from the pooled output's length per clip."""
        if self.clip_frames % last_length:
            raise ValueError(
                f"{config_name}.clip_frames={self.clip_frames} gives {last_length} output steps per clip, not a whole "
                f"temporal stride; choose clip_frames as a multiple of the backbone's temporal stride "
                f"({self.backbone.temporal_stride})"
            )
        return self.clip_frames // last_length

    # ---------------------------------------------------------------------------------------------- what learns
    def train(self, mode: bool = True) -> "FrozenBackboneAdapter":
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the backbone's own weights (what the optimizer gets)."""
        frozen = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen and p.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        learnable = sum(p.numel() for p in self.trainable_parameters())
        backbone = sum(p.numel() for p in self.backbone.parameters())
        return {"learnable": learnable, "backbone": backbone, "total": learnable + backbone}

    # ---------------------------------------------------------------------------------------------------- clips
    def cut_clips(self, video: Tensor) -> tuple[Tensor, int]:
        """(B, C, n·clip_frames, H, W) → clips (B·n, C, clip_frames, H, W), batch-major, and n."""
        if video.ndim != 5:
            raise ValueError(f"{type(self).__name__} expects a video of shape (B, C, T, H, W), got "
                             f"{tuple(video.shape)}")
        b, c, t, h, w = video.shape
        if t == 0 or t % self.clip_frames:
            raise ValueError(
                f"{type(self).__name__}: video length T={t} frames is not a positive multiple of "
                f"clip_frames={self.clip_frames}; pad or crop the video to whole clips"
            )
        n = t // self.clip_frames
        clips = video.reshape(b, c, n, self.clip_frames, h, w).transpose(1, 2).reshape(b * n, c, self.clip_frames, h, w)
        return clips, n

    @torch.no_grad()
    def frozen_features(self, clips: Tensor, layer_indices: Sequence[int],
                        clip_batch: int | None = None) -> tuple[Tensor, list[Tensor]]:
        """The backbone under ``no_grad``: pooled last-layer features (B·n, C_out, T_N) and the maps of the layers
        ``layer_indices`` (into its intermediate list), all detached; ``clip_batch`` clips per backbone call (bounds
        the no-grad peak; None: all at once)."""
        step = clip_batch or clips.shape[0]
        pooled, maps = [], [[] for _ in layer_indices]
        for start in range(0, clips.shape[0], step):
            final, intermediates = self.backbone.forward_features(clips[start:start + step], return_intermediates=True)
            pooled.append(self.backbone.pool(final).detach())
            for slot, index in enumerate(layer_indices):
                maps[slot].append(intermediates[index].detach())
        if len(pooled) == 1:
            return pooled[0], [m[0] for m in maps]
        return torch.cat(pooled), [torch.cat(m) for m in maps]


class InBlockAdapter(FrozenBackboneAdapter):
    """Adapters inside the blocks of a frozen video ViT (:class:`~revtal.backbones.backbone.VideoViTBackbone`).

    The backbone's modules are used as they are and never rewritten, so its state-dict keys stay those of the
    pretrained checkpoint (``backbone.net.…``) and the adapters live beside it (``adapters.<block>.…``). The model
    runs the ViT's embedding, then each block through :meth:`run_block` (which calls the block's own submodules with
    the adapters in between), then the ViT's final norm and the backbone's pooling, all with gradients: the
    adapters' gradients pass back through the frozen blocks above them."""

    backprop_through_backbone = True

    def __init__(self, backbone: VideoBackbone, clip_frames: int, layers: str | Sequence[int], config_name: str):
        if not isinstance(backbone, VideoViTBackbone):
            raise ValueError(
                f"{config_name}: in-block adapters need a video ViT backbone (vit_*_video: adapters inside its "
                f"transformer blocks), got {backbone.name or type(backbone).__name__!r}"
            )
        super().__init__(backbone, clip_frames)
        net = backbone.net
        if not isinstance(net.blocks, (nn.Sequential, nn.ModuleList)):
            raise ValueError(f"{config_name}: the backbone's blocks were converted ({type(net.blocks).__name__}); "
                             "in-block adapters need the unconverted network")
        self.num_blocks = len(net.blocks)
        self.layer_indices = resolve_layers(layers, self.num_blocks, config_name)
        grid = net.grid_size
        if clip_frames != net.patch_embed.num_frames:
            raise ValueError(f"{config_name}.clip_frames={clip_frames} but the ViT was built for clips of "
                             f"{net.patch_embed.num_frames} frames")
        self.grid = grid  # (T', H', W') tokens of one clip
        self.temporal_stride = net.temporal_stride
        self.out_channels = backbone.out_channels
        self.embed_dim = net.embed_dim

    def run_block(self, index: int, block: nn.Module, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def clip_features(self, clips: Tensor) -> Tensor:
        """Clips (N, C, T, H, W) → pooled features (N, C_out, T') with the adapters in the blocks."""
        net = self.backbone.net
        tokens = net.embed(clips)
        for index, block in enumerate(net.blocks):
            tokens = self.run_block(index, block, tokens)
        return self.backbone.pool(net.tokens_to_map(net.norm(tokens)))

    def forward(self, video: Tensor) -> Tensor:
        clips, n = self.cut_clips(video)
        pooled = self.clip_features(clips)  # (B·n, C, T')
        return clips_to_channels_sequence(pooled, video.shape[0], n)


# ------------------------------------------------------------------------------------------------------ helpers
def resolve_layers(layers: str | Sequence[int], num_layers: int, config_name: str = "LoSAConfig") -> list[int]:
    """Layer indices (ascending, non-negative) among ``num_layers``. "shallower" and "deeper" split them into
    complementary halves (the deeper half gets the middle layer when the count is odd)."""
    if isinstance(layers, str):
        half = num_layers // 2
        chosen = {"all": range(num_layers), "shallower": range(half), "deeper": range(half, num_layers)}[layers]
        if not chosen:
            raise ValueError(f"{config_name}.layers={layers!r} selects no layer of a backbone with {num_layers} layers")
        return list(chosen)
    resolved = []
    for index in layers:
        if not -num_layers <= index < num_layers:
            raise ValueError(
                f"{config_name}.layers: index {index} is out of range for a backbone with {num_layers} layers"
            )
        resolved.append(index % num_layers)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"{config_name}.layers {list(layers)} names a layer twice (after resolving negative indices)")
    return sorted(resolved)


def bottleneck_width(dim: int, ratio: float, multiple: int = 1) -> int:
    """ratio·dim rounded to a multiple of ``multiple`` (at least ``multiple``, at most ``dim``)."""
    return min(dim, max(multiple, round(dim * ratio / multiple) * multiple))


def clips_to_sequence(x: Tensor, batch: int, clips: int) -> Tensor:
    """(B·n, L, C) per clip → (B, n·L, C) per video, clips concatenated in time."""
    return x.reshape(batch, clips * x.shape[1], x.shape[2])


def sequence_to_clips(x: Tensor, clips: int) -> Tensor:
    """(B, n·L, C) → (B·n, L, C)."""
    b, length, c = x.shape
    return x.reshape(b * clips, length // clips, c)


def clips_to_channels_sequence(pooled: Tensor, batch: int, clips: int) -> Tensor:
    """Per-clip features (B·n, C, L) → (B, C, n·L), the localizer's layout, clips concatenated in time."""
    c, length = pooled.shape[1], pooled.shape[2]
    return pooled.reshape(batch, clips, c, length).permute(0, 2, 1, 3).reshape(batch, c, clips * length)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


__all__ = [
    "AdapterConfig", "FrozenBackboneAdapter", "InBlockAdapter", "LAYER_SETS", "bottleneck_width",
    "clips_to_channels_sequence", "clips_to_sequence", "resolve_layers", "sequence_to_clips",
]
