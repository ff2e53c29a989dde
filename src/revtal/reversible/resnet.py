"""ResNets — torchvision's 2D ``ResNet`` (BasicBlock, Bottleneck; also ResNeXt / Wide ResNet) and its video
``VideoResNet`` (``r3d_18``, ``mc3_18``, ``r2plus1d_18``: BasicBlock/Bottleneck over Conv3DSimple, Conv3DNoTemporal
or Conv2Plus1D).

Every ``layerN`` is a stage. Its first block usually changes resolution and width through a ``downsample``
shortcut; such blocks cannot be reversible (the two streams must keep one shape) and stay ordinary layers whose
activations are kept. The remaining blocks become reversible branches.

A ResNet block applies its last ReLU *after* the residual sum, ``x_i = relu(body(x) + x)``, which is not of the
form x + F(x). Re²TAL moves the ReLU inside the branch (F = relu(body)), which changes the network even at
(α=1, β=0). revtal instead lets the branch see α and computes the whole G directly::

    G_α(x) = relu(body(x) + α·x)            x_i = G_α(x_{i-1}) + y_{i-1}

At α=1 this is the pretrained block, bitwise (so Dr²Net's starting point really is the pretrained ResNet); at α=0
it is Re²TAL's relu(body(x)). Invertibility is unaffected: the inverse only needs G recomputed from the
reconstructed x_{i-1}. docs/CONVERTERS.md records the measured deviation of the two forms.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.video import resnet as tv_video_resnet

from revtal.reversible.convert import Family, StageSpec, register_family
from revtal.reversible.function import Branch


def _basic_2d(block: nn.Module, x: Tensor) -> Tensor:
    return block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))


def _bottleneck_2d(block: nn.Module, x: Tensor) -> Tensor:
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.relu(block.bn2(block.conv2(out)))
    return block.bn3(block.conv3(out))


def _basic_video(block: nn.Module, x: Tensor) -> Tensor:
    # conv1 is (conv, bn, relu); conv2 is (conv, bn)
    return block.conv2(block.conv1(x))


def _bottleneck_video(block: nn.Module, x: Tensor) -> Tensor:
    return block.conv3(block.conv2(block.conv1(x)))


# the residual body b(x) of each supported block: its forward is relu(b(x) + shortcut(x))
RESIDUAL_BODY: dict[type, Callable[[nn.Module, Tensor], Tensor]] = {
    tv_resnet.BasicBlock: _basic_2d,
    tv_resnet.Bottleneck: _bottleneck_2d,
    tv_video_resnet.BasicBlock: _basic_video,
    tv_video_resnet.Bottleneck: _bottleneck_video,
}

SUPPORTED = [f"{t.__module__}.{t.__qualname__}" for t in RESIDUAL_BODY]


def _block_with_scaled_skip(block: nn.Module, x: Tensor, alpha: float) -> Tensor:
    body = RESIDUAL_BODY[type(block)](block, x)
    if alpha == 1.0:
        return block.relu(body + x)  # the torchvision block's own arithmetic: bitwise the pretrained network
    return block.relu(body if alpha == 0.0 else body + alpha * x)


def resnet_branches(block: nn.Module, context: dict) -> list[Branch]:
    return [Branch(block, partial(_block_with_scaled_skip, block), includes_skip=True)]


def _stage_names(module: nn.Module) -> list[str]:
    return [
        name for name, child in module.named_children()
        if isinstance(child, nn.Sequential) and any(isinstance(b, tuple(RESIDUAL_BODY)) for b in child)
    ]


def _resnet_stages(module: nn.Module, prefix: str) -> list[StageSpec]:
    specs = []
    for stage_name in _stage_names(module):
        stage = getattr(module, stage_name)
        name = f"{prefix}.{stage_name}" if prefix else stage_name
        blocks = dict(stage.named_children())
        for child_name, block in blocks.items():
            if type(block) not in RESIDUAL_BODY:
                raise TypeError(
                    f"{name}.{child_name} is a {type(block).__module__}.{type(block).__qualname__}; the ResNet "
                    f"converter supports {', '.join(SUPPORTED)}"
                )
        # blocks with a downsample shortcut change the tensor shape and run as ordinary layers; they must lead
        plain_prefix = 0
        for block in blocks.values():
            if block.downsample is None:
                break
            plain_prefix += 1
        for child_name, block in list(blocks.items())[plain_prefix:]:
            if block.downsample is not None:
                raise TypeError(
                    f"{name}.{child_name} has a downsample shortcut after reversible blocks; only the leading blocks "
                    "of a stage may change shape (they stay ordinary layers)"
                )
        specs.append(StageSpec(module, stage_name, blocks, resnet_branches, plain_prefix, name))
    return specs


RESNET = register_family(
    Family(
        name="resnet",
        supported=SUPPORTED,
        matches=lambda module: bool(_stage_names(module)),
        find_stages=_resnet_stages,
        notes="first block of a stage (downsample) stays ordinary; branch G = relu(body + alpha*x)",
    )
)
