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

When the stages run memory-free, the ordinary layers between two stages' reversible runs — the lateral fusion
after stage k and the entry blocks of stage k+1 of both pathways (for k = 0: the stems and the first fusion) — run
as one checkpointed region whose inputs are the stage outputs the reversible runs keep anyway: a step then stores
only the two streams of each run (and the clip), not the fusions' convolutions, the concatenated slow input or the
entry blocks' activations (:func:`revtal.reversible.replay.checkpoint_layer`).
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from revtal.backbones.backbone import Features, VideoBackbone, run_sequence
from revtal.reversible.replay import batchnorm_modules, checkpoint_layer, statistics_unchanged
from revtal.reversible.stage import ReversibleStage, runs_memory_free

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
        if not return_intermediates and runs_memory_free(self.net):
            return self._merge(self._memory_free_features(self.pathways(video)))
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

    def _memory_free_features(self, pair: list[Tensor]) -> list[Tensor]:
        """The pathways' last feature maps, with the ordinary layers between reversible runs as checkpointed
        regions (the caller has checked that the stages run memory-free, so each region is checkpointed without
        asking again: that question walks the whole network). A region's recompute in backward is what a step
        holds at its peak, so each is kept small: the stems with the first fusion (from the clip; their outputs,
        1/16 of a stage's streams, are kept), then per pathway the lateral fusion after stage k (run in each
        pathway's region that it changes) and that pathway's entry blocks of stage k+1, from the two stage outputs
        the reversible runs keep anyway."""
        blocks = self.net.blocks
        pair = checkpoint_layer(_multipathway(blocks[0]), *pair, modules=[blocks[0]])
        fusion = None  # the lateral fusion still to apply to `pair`
        for k in range(1, 5):
            stages = blocks[k].multipathway_blocks
            # pathways the fusion returns as it was given them (pytorchvideo's fusion passes the fast one through):
            # their regions need not run the fusion, which would compute its convolution once more for nothing
            unchanged: set[int] = set()
            entered = []
            for p, stage in enumerate(stages):
                entries = _entry_blocks(stage)
                if fusion is None or p in unchanged:
                    x = checkpoint_layer(partial(run_sequence, entries), pair[p], modules=entries) if entries \
                        else pair[p]
                else:
                    x = checkpoint_layer(partial(_fused_entry, fusion, p, entries, unchanged), *pair,
                                         modules=[fusion, *entries])
                entered.append(x)
            pair = [_after_entry(stage, x) for stage, x in zip(stages, entered)]
            fusion = blocks[k].multipathway_fusion
        return checkpoint_layer(_multipathway(fusion), *pair, modules=[fusion])


def _multipathway(module: nn.Module):
    """``module`` (taking and returning a list of pathways) as a function of the pathway tensors."""
    def run(*pair: Tensor) -> list[Tensor]:
        return list(module(list(pair)))
    return run


def _fused_entry(fusion: nn.Module, pathway: int, entries: list[nn.Module], unchanged: set[int],
                 *pair: Tensor) -> Tensor:
    """One pathway after the lateral fusion, through the next stage's entry blocks; adds to ``unchanged`` the
    pathways the fusion passed through as given (the same tensors), whose regions then skip it. The first
    pathway's region runs the fusion first; the others that need it run it again, leaving its BatchNorm statistics
    as the first run left them."""
    repeat = statistics_unchanged(batchnorm_modules(fusion)) if pathway else contextlib.nullcontext()
    with repeat:
        fused = fusion(list(pair))
    unchanged.update(q for q, (after, before) in enumerate(zip(fused, pair)) if after is before)
    return run_sequence(entries, fused[pathway])


def _entry_blocks(res_stage: nn.Module) -> list[nn.Module]:
    blocks = res_stage.res_blocks
    return blocks.entry_blocks() if isinstance(blocks, ReversibleStage) else []


def _after_entry(res_stage: nn.Module, x: Tensor) -> Tensor:
    blocks = res_stage.res_blocks
    if isinstance(blocks, ReversibleStage):
        return blocks.forward_after_entry(x)
    return res_stage(x)


def slowfast(depth: int, **opts) -> nn.Module:
    """``pytorchvideo.models.slowfast.create_slowfast(model_depth=depth, **opts)`` (pytorchvideo imported here)."""
    from pytorchvideo.models.slowfast import create_slowfast  # optional (and heavy): only SlowFast needs it

    return create_slowfast(model_depth=depth, **opts)
