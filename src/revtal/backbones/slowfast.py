"""pytorchvideo SlowFast (``create_slowfast``, R50/R101) as a revtal video backbone.

SlowFast reads a list of two clips: the slow pathway sees every α-th frame, the fast pathway every frame (α = 4 for
the published 8×8 and 16×8 Kinetics models). :class:`SlowFastBackbone` accepts either that list or one clip
(B, C, T, H, W), from which it builds the pair itself, so the trainer, the extractor and the detector feed it like
any other backbone. The features are the two pathways' maps after the last stage, the fast one averaged over each
group of α frames so both share the slow pathway's time axis, concatenated along channels: (B, C_slow + C_fast,
T/α, H', W'); the temporal stride is α.

``revtal.convert`` finds every residual stage of both pathways (pytorchvideo ``ResStage.res_blocks``); the first
block of each stage (projection shortcut) and the lateral fast→slow fusions stay ordinary, as in Re²TAL. The
network is kept unchanged under ``.net`` except its classification head (``blocks.6``, replaced by the identity),
so a published pytorchvideo checkpoint (``{"model_state": ...}`` with keys ``blocks.N...``) loads strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from revtal.backbones.backbone import Features, VideoBackbone

Clips = Tensor | list[Tensor] | tuple[Tensor, Tensor]


class SlowFastBackbone(VideoBackbone):
    family = "slowfast"

    def __init__(self, net: nn.Module, alpha: int = 4, name: str = ""):
        if len(net.blocks) != 7:
            raise ValueError(
                f"expected a create_slowfast network (stem, 4 stages, pool, head), got {len(net.blocks)} blocks"
            )
        widths = [p.res_blocks[-1].branch2.conv_c.out_channels for p in net.blocks[4].multipathway_blocks]
        net.blocks[6] = nn.Identity()
        super().__init__(net, sum(widths), alpha, name)
        self.alpha = alpha

    def pathways(self, clips: Clips) -> list[Tensor]:
        """[slow, fast] from one clip (every α-th frame / every frame) or from the pair itself."""
        if isinstance(clips, (list, tuple)):
            if len(clips) != 2:
                raise ValueError(f"SlowFast takes [slow clip, fast clip], got a list of {len(clips)}")
            slow, fast = clips
            if fast.shape[2] != slow.shape[2] * self.alpha:
                raise ValueError(
                    f"the fast clip must have alpha={self.alpha} times the slow clip's frames, got {fast.shape[2]} "
                    f"and {slow.shape[2]}"
                )
            return [slow, fast]
        self._check_video(clips)
        if clips.shape[2] % self.alpha:
            raise ValueError(f"SlowFast needs a clip length divisible by alpha={self.alpha}, got {clips.shape[2]}")
        return [clips[:, :, :: self.alpha], clips]

    def _merge(self, pair: list[Tensor]) -> Tensor:
        slow, fast = pair
        fast = F.avg_pool3d(fast, (self.alpha, 1, 1)) if self.alpha > 1 else fast
        if slow.shape[2:] != fast.shape[2:]:
            raise ValueError(f"slow and fast maps do not align: {tuple(slow.shape)} vs {tuple(fast.shape)}")
        return torch.cat([slow, fast], dim=1)

    def forward_features(self, video: Clips, return_intermediates: bool = False) -> Features:
        # pytorchvideo's multipathway blocks write their outputs into the list they are given: always a fresh one
        x = list(self.pathways(video))
        x = self.net.blocks[0](x)
        intermediates = []
        for stage in self.net.blocks[1:5]:
            x = stage(list(x))
            if return_intermediates:
                intermediates.append(self._merge(x))
        final = self._merge(x)
        return (final, intermediates) if return_intermediates else final


def slowfast(depth: int, **opts) -> nn.Module:
    """``pytorchvideo.models.slowfast.create_slowfast(model_depth=depth, **opts)`` (pytorchvideo imported here)."""
    from pytorchvideo.models.slowfast import create_slowfast  # optional (and heavy): only SlowFast needs it

    return create_slowfast(model_depth=depth, **opts)
