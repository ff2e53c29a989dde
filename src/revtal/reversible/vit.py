"""Vision transformers (timm ``Block``): every pre-norm transformer block holds two residual branches,

    F_attn(x) = drop_path1(ls1(attn(norm1(x))))      F_mlp(x) = drop_path2(ls2(mlp(norm2(x))))

so a ViT of L blocks is a reversible stage of 2L branches. Any module whose ``blocks`` attribute is a sequence of
timm ``Block`` modules qualifies: timm's ``VisionTransformer`` and its variants, and revtal's video ViT
(:mod:`revtal.backbones.video_vit`), which reuses timm's block.
"""

from __future__ import annotations

from functools import partial

from timm.models.vision_transformer import Block
from torch import Tensor, nn

from revtal.reversible.convert import Family, StageSpec, register_family
from revtal.reversible.function import Branch


def _attention_branch(block: Block, x: Tensor) -> Tensor:
    return block.drop_path1(block.ls1(block.attn(block.norm1(x))))


def _mlp_branch(block: Block, x: Tensor) -> Tensor:
    return block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def vit_branches(block: nn.Module, context: dict) -> list[Branch]:
    return [Branch(block, partial(_attention_branch, block)), Branch(block, partial(_mlp_branch, block))]


def _has_transformer_blocks(module: nn.Module) -> bool:
    blocks = getattr(module, "blocks", None)
    return isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0 and any(
        isinstance(b, Block) for b in blocks
    )


def _vit_stages(module: nn.Module, prefix: str) -> list[StageSpec]:
    blocks = module.blocks
    for name, block in blocks.named_children():
        if type(block) is not Block:
            raise TypeError(
                f"{prefix + '.' if prefix else ''}blocks.{name} is a {type(block).__module__}.{type(block).__name__}; "
                f"the ViT converter supports {Block.__module__}.Block (pre-norm x + F_attn(x), x + F_mlp(x)) only"
            )
    if getattr(module, "grad_checkpointing", False):
        raise ValueError(
            f"{type(module).__name__} has timm grad_checkpointing enabled; reversible stages already avoid storing "
            "activations: call set_grad_checkpointing(False) before converting"
        )
    name = f"{prefix}.blocks" if prefix else "blocks"
    return [StageSpec(module, "blocks", dict(blocks.named_children()), vit_branches, 0, name)]


VIT = register_family(
    Family(
        name="vit",
        supported=["timm.models.vision_transformer.VisionTransformer (and any module with .blocks of timm Block)"],
        matches=_has_transformer_blocks,
        find_stages=_vit_stages,
    )
)
