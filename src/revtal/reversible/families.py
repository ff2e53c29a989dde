"""The built-in converter families: which block types of which library are residual blocks.

Each family is a short declarative list of :class:`~revtal.reversible.convert.BlockRule` s; its library is
imported only when a conversion first needs the family, and only if the model's library is already imported (a
model holding its blocks has imported it): the reversible core imports with torch alone and converting a timm model
never imports transformers. Almost every rule is *traced*: the block's forward is split into
residual branches automatically (:mod:`revtal.reversible.trace`), and instances whose shortcut is not the identity
(a downsampling ResNet block, MViT's pooling blocks, a ConvNeXt stage's first block with a projection) stay
ordinary. docs/CONVERTERS.md has the coverage table.

:func:`builtin_families` is the one place they are listed; :func:`revtal.reversible.convert.registered_families`
registers them on first use. Users add their own with :func:`~revtal.reversible.convert.register_family`.
"""

from __future__ import annotations

from revtal.reversible.rules import BlockRule, Family


def _timm_rules() -> list[BlockRule]:
    # each family imports its library when its rules are first needed (see the module docstring)
    from timm.models import beit, cait, convnext, eva, metaformer, mvitv2, resnet, resnetv2
    from timm.models import swin_transformer_v2 as swin_v2
    from timm.models import swin_transformer_v2_cr as swin_v2_cr
    from timm.models import vision_transformer as vit

    from revtal.reversible import swin  # it imports timm, loaded with this family only

    traced = [
        vit.Block, vit.ResPostBlock, vit.ParallelScalingBlock, vit.ParallelThingsBlock,
        eva.EvaBlock, eva.EvaBlockPostNorm, beit.Block, cait.LayerScaleBlock,
        resnet.BasicBlock, resnet.Bottleneck, resnetv2.PreActBasic, resnetv2.PreActBottleneck, resnetv2.Bottleneck,
        convnext.ConvNeXtBlock, swin_v2.SwinTransformerV2Block, swin_v2_cr.SwinTransformerV2CrBlock,
    ]
    return [BlockRule(t) for t in traced] + [
        BlockRule(swin.TIMM_BLOCK, branches_of=swin.timm_swin_branches, describe="(one shifted-window mask per stage)"),
        BlockRule(mvitv2.MultiScaleBlock, protocol="carry"),
        # PoolFormer/ConvFormer/CAFormer: res_scale is the identity or a learnable per-channel Scale (init 1)
        BlockRule(metaformer.MetaFormerBlock, shortcuts=(metaformer.Scale,), describe="(res_scale joins the branch)"),
    ]


def _torchvision_rules() -> list[BlockRule]:
    # each family imports its library when its rules are first needed
    from torchvision.models import convnext, mobilenetv2, regnet, resnet, swin_transformer, vision_transformer
    from torchvision.ops.misc import Conv2dNormActivation
    from torchvision.models.video import mvit
    from torchvision.models.video import resnet as video_resnet

    from revtal.reversible import video_swin  # it imports torchvision, loaded with this family only

    traced = [
        resnet.BasicBlock, resnet.Bottleneck, video_resnet.BasicBlock, video_resnet.Bottleneck,
        vision_transformer.EncoderBlock, convnext.CNBlock,
        swin_transformer.SwinTransformerBlock, swin_transformer.SwinTransformerBlockV2,
        regnet.ResBottleneckBlock, mobilenetv2.InvertedResidual,
    ]
    video_swin_rule = BlockRule(
        swin_transformer.SwinTransformerBlock, when=video_swin.is_video_swin_block,
        branches_of=video_swin.video_swin_branches, describe="(Video Swin; window attention chunked on request)",
    )
    # the Video Swin rule comes first: a block takes the first rule that applies to it
    return [video_swin_rule] + [BlockRule(t) for t in traced] + [
        BlockRule(mvit.MultiscaleBlock, protocol="carry"),
        BlockRule(Conv2dNormActivation, residual=False, describe="(MobileNetV2's stem and last layer: ordinary)"),
    ]


def _pytorchvideo_rules() -> list[BlockRule]:
    # each family imports its library when its rules are first needed
    from pytorchvideo.models import resnet

    return [BlockRule(resnet.ResBlock)]


def _transformers_rules() -> list[BlockRule]:
    # each family imports its library when its rules are first needed
    from transformers.models.videomae import modeling_videomae

    return [BlockRule(modeling_videomae.VideoMAELayer, inline=("output",))]


def builtin_families() -> list[Family]:
    return [
        Family("timm", "timm", _timm_rules,
               notes="ViT/EVA/BEiT/CaiT/ResNet/ResNetV2/ConvNeXt/Swin/Swin V2/MViTv2/MetaFormer", requires="timm"),
        Family("torchvision", "torchvision", _torchvision_rules,
               notes="ResNet, video ResNet, RegNet, MobileNetV2, ViT, ConvNeXt, Swin/Swin V2/Video Swin, MViT v1/v2",
               requires="torchvision"),
        Family("pytorchvideo", "pytorchvideo", _pytorchvideo_rules, notes="ResNet/SlowFast residual blocks",
               requires="pytorchvideo"),
        Family("transformers", "transformers", _transformers_rules, notes="VideoMAE encoder layers",
               requires="transformers"),
    ]
