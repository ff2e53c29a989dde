"""One interface over every video backbone family: clip in, temporal feature sequence out.

A :class:`VideoBackbone` wraps a network (kept unchanged under ``.net``, so ``revtal.convert(backbone, ...)``
converts it in place and a checkpoint of the raw network loads into ``backbone.net``) and gives

* ``forward(video (B, C, T, H, W)) -> (B, out_channels, T')`` — spatially mean-pooled features, what a localizer
  consumes; ``T' = T / temporal_stride`` (rounded up where a network pads);
* ``forward_features(video, return_intermediates=False)`` — the final feature map (B, C, T', H', W'), and with
  ``return_intermediates=True`` also a list of intermediate feature maps (B, C_i, T_i, H_i, W_i), shallow to deep,
  for LoSA-style adapters: per transformer block for a ViT, per stage for Swin and ResNet. Per-stage maps survive
  ``revtal.convert`` (a reversible stage replaces a stage in place); per-block ViT maps do not (the blocks are fused
  into one reversible stage), so a converted ViT refuses ``return_intermediates``;
* ``load_checkpoint(path, strict=True)`` — a local checkpoint into ``.net``, unwrapped, prefix-stripped and
  key-mapped per family; classification heads and decoders are dropped (and reported), anything else that does not
  fit raises :class:`~revtal.backbones.weights.CheckpointMismatchError`.

The classification heads of the wrapped torchvision networks are replaced by ``nn.Identity``: a backbone has no
head (use :class:`~revtal.backbones.classifier.ClipClassifier` to train one on clips).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch import Tensor, nn
from torchvision.models.swin_transformer import PatchMerging as PatchMerging2d
from torchvision.models.video.swin_transformer import PatchMerging as PatchMerging3d

from revtal.backbones.layouts import Prepared, prepare
from revtal.backbones.weights import LoadReport, StateDict, load_checked, read_state_dict
from revtal.backbones.video_vit import VideoViT
from revtal.reversible.stage import ReversibleStage, between_stages, runs_memory_free

Features = Tensor | tuple[Tensor, list[Tensor]]


class VideoBackbone(nn.Module):
    """Base class; subclasses implement :meth:`forward_features` (and :meth:`pool` if mean pooling is not all)."""

    # the checkpoint layouts this network loads (revtal.backbones.layouts.NAMINGS of this family)
    family: str = ""

    def __init__(self, net: nn.Module, out_channels: int, temporal_stride: int, name: str = ""):
        super().__init__()
        self.net = net
        self.out_channels = out_channels
        self.temporal_stride = temporal_stride
        self.name = name
        self.load_report: LoadReport | None = None

    def forward(self, video: Tensor) -> Tensor:
        return self.pool(self.forward_features(video))

    def forward_features(self, video: Tensor, return_intermediates: bool = False) -> Features:
        raise NotImplementedError

    def pool(self, feature_map: Tensor) -> Tensor:
        """(B, C, T', H', W') → (B, C, T')."""
        return feature_map.mean((-2, -1))

    # ------------------------------------------------------------------------------------------------ checkpoints
    @classmethod
    def prepare_state_dict(cls, state_dict: StateDict, target: StateDict | None = None) -> Prepared:
        """Raw checkpoint → keys of ``.net`` (see :mod:`revtal.backbones.layouts`): the backbone taken out of what
        holds it, renamed from its code base's layout, heads and decoders dropped. ``target``: ``.net``'s state
        dict, for the buffers the network computes itself and shape-dependent conversions."""
        return prepare(state_dict, cls.family, target)

    def load_checkpoint(
        self, checkpoint: str | Path | StateDict, strict: bool = True, source: str | None = None,
        trust: bool = False,
    ) -> LoadReport:
        """Load a local checkpoint file (or an in-memory state dict, named ``source`` in errors) into ``.net``.
        ``trust``: allow full unpickling of the file (see :func:`~revtal.backbones.weights.read_checkpoint`)."""
        if isinstance(checkpoint, dict):
            raw = checkpoint
            source = source or "<state dict>"
        else:
            raw = read_state_dict(checkpoint, trust=trust)
            source = source or str(checkpoint)
        prepared = self.prepare_state_dict(raw, self.net.state_dict())
        self.load_report = load_checked(self.net, prepared.state_dict, strict=strict, source=source,
                                        dropped=prepared.dropped, layout=prepared.layout, notes=prepared.notes,
                                        identify_from=raw, expected_backbone=self.name)
        return self.load_report

    @staticmethod
    def _check_video(video: Tensor) -> None:
        if video.ndim != 5:
            raise ValueError(f"a video backbone expects clips of shape (B, C, T, H, W), got {tuple(video.shape)}")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_channels={self.out_channels}, temporal_stride={self.temporal_stride}"


class VideoViTBackbone(VideoBackbone):
    """:class:`~revtal.backbones.video_vit.VideoViT`; intermediates: every block's output."""

    family = "vit"

    def __init__(self, net: VideoViT, name: str = ""):
        super().__init__(net, net.embed_dim, net.temporal_stride, name)

    def forward(self, video: Tensor) -> Tensor:
        self._check_video(video)
        return self.net.temporal_features(video)

    def forward_features(self, video: Tensor, return_intermediates: bool = False) -> Features:
        self._check_video(video)
        out = self.net.forward_features(video, return_intermediates)
        if return_intermediates:
            tokens, intermediates = out
            return self.net.tokens_to_map(tokens), intermediates
        return self.net.tokens_to_map(out)

    def pool(self, feature_map: Tensor) -> Tensor:
        return self.net.fc_norm(feature_map.mean((-2, -1)).transpose(1, 2)).transpose(1, 2)


class Swin3dBackbone(VideoBackbone):
    """torchvision ``SwinTransformer3d`` (Video Swin); intermediates: every stage's output (before the final norm).

    Patch merging only halves space, so the temporal stride is the patch embedding's temporal size (2)."""

    family = "swin3d"

    def __init__(self, net: nn.Module, name: str = ""):
        out_channels = net.num_features
        net.head = nn.Identity()
        super().__init__(net, out_channels, net.patch_embed.tuple_patch_size[0], name)

    def forward_features(self, video: Tensor, return_intermediates: bool = False) -> Features:
        self._check_video(video)
        net = self.net
        x = net.pos_drop(between_stages(net, net.patch_embed, video))  # channels last: (B, T', H', W', C)
        intermediates = []
        for layer in net.features:
            x = between_stages(net, layer, x) if isinstance(layer, (PatchMerging2d, PatchMerging3d)) else layer(x)
            if return_intermediates and not isinstance(layer, (PatchMerging2d, PatchMerging3d)):
                intermediates.append(x.permute(0, 4, 1, 2, 3))
        final = net.norm(x).permute(0, 4, 1, 2, 3)
        return (final, intermediates) if return_intermediates else final


def run_sequence(blocks: list[nn.Module], x: Tensor) -> Tensor:
    """``blocks`` one after the other (a region of layers handed to checkpointing as one function)."""
    for block in blocks:
        x = block(x)
    return x


class ResNet3dBackbone(VideoBackbone):
    """torchvision ``VideoResNet`` (r3d_18, mc3_18, r2plus1d_18); intermediates: outputs of layer1..layer4."""

    family = "resnet3d"
    stages = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, net: nn.Module, temporal_stride: int, name: str = ""):
        out_channels = net.fc.in_features
        net.fc = nn.Identity()
        super().__init__(net, out_channels, temporal_stride, name)

    def forward_features(self, video: Tensor, return_intermediates: bool = False) -> Features:
        self._check_video(video)
        first = self.net.layer1
        if isinstance(first, ReversibleStage) and runs_memory_free(self.net):
            # the stem and layer1's entry blocks as one checkpointed region: a step keeps the clip, not the stem's
            # activations (the later stages' entry blocks keep only their input, the output the stage before keeps)
            entry = first.entry_blocks()
            x = between_stages(self.net, partial(run_sequence, [self.net.stem, *entry]), video,
                               modules=[self.net.stem, *entry])
            x = first.forward_after_entry(x)
        else:
            x = self.net.stem(video)
            first = None
        intermediates = [x] if first is not None and return_intermediates else []
        for stage in self.stages[1:] if first is not None else self.stages:
            x = getattr(self.net, stage)(x)
            if return_intermediates:
                intermediates.append(x)
        return (x, intermediates) if return_intermediates else x
