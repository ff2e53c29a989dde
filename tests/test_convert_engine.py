"""The conversion engine: traced residual branches (operand order, ordinary blocks inside a stage), no silent no-op
when code walks the blocks itself, unconvertible blocks named with the reason, and a core that imports with torch
alone and registers its families explicitly."""

import copy
from pathlib import Path
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

import revtal
from revtal.reversible import BlockRule, BypassError, Family, register_family, reversible_stages
from revtal.reversible.convert import FAMILIES
from revtal.reversible.trace import NotResidual, plan_block
from tests.helpers import assert_bitwise_same_network, tiny_vit


def test_core_imports_with_torch_alone_and_registers_families_on_first_use():
    code = (
        "import sys; import revtal.reversible as r; "
        "heavy = [m for m in ('timm', 'torchvision', 'pytorchvideo', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy; assert not r.FAMILIES, r.FAMILIES; "
        "names = sorted(r.registered_families()); assert names == "
        "['pytorchvideo', 'timm', 'torchvision', 'transformers'], names; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_skip_first_operand_order_keeps_average_pooled_logits_bitwise():
    # timm computes x + F(x); F(x) + x gives a tensor of another memory layout, and the average pool then sums in
    # another order (7.5e-8 apart in float32 before the fix)
    reference = tiny_vit(depth=3, class_token=False, global_pool="avg").eval()
    x = torch.randn(2, 3, 16, 16)
    assert_bitwise_same_network(reference, revtal.convert(copy.deepcopy(reference), "original"), x)


def test_traced_plan_sees_operand_order_tails_and_ordinary_shortcuts():
    from torchvision.models.convnext import CNBlock
    from torchvision.models.resnet import BasicBlock

    # ResNet: relu after the sum is the tail of the one branch; a downsampling block is ordinary, with the reason
    assert len(plan_block(BasicBlock(8, 8)).branches) == 1
    shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, 2), nn.BatchNorm2d(16))
    with pytest.raises(NotResidual, match="shortcut is not the identity.*downsample"):
        plan_block(BasicBlock(8, 16, 2, shortcut))
    # ConvNeXt (torchvision): `result += input`, F(x) first and in place
    block = CNBlock(8, layer_scale=0.5, stochastic_depth_prob=0.0).eval()
    x = torch.randn(2, 8, 6, 6)
    (code,) = plan_block(block).branches
    assert torch.equal(code.fn(block, x, 1.0), block(x))
    assert torch.allclose(code.fn(block, x, 0.0) + x, block(x), atol=1e-6)


def test_ordinary_blocks_inside_a_stage_split_it_into_reversible_runs():
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    blocks = [BasicBlock(8, 8), BasicBlock(8, 8), BasicBlock(8, 8, 1, nn.Conv2d(8, 8, 1)), BasicBlock(8, 8)]
    reference = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(*blocks)).double()
    model = revtal.convert(copy.deepcopy(reference), "re2")
    (stage,) = reversible_stages(model)
    assert stage.plain == {2}
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert_bitwise_same_network(reference, revtal.convert(copy.deepcopy(reference), "original"), x)


def test_features_only_and_forward_intermediates_refuse_instead_of_bypassing_the_stage():
    model = revtal.convert(timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=16,
                                             depth=2, num_heads=2, num_classes=3), "re2")
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(BypassError, match="forward_intermediates"):
        model.forward_intermediates(x)
    features = revtal.convert(timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=16,
                                                depth=3, num_heads=2, features_only=True), "re2")
    with pytest.raises(BypassError, match="reversible stage"):
        features(x)
    # a block called on its own (a wrapper holding the original blocks) is refused too
    with pytest.raises(BypassError, match=r"blocks\.1 \(Block\) is part of reversible stage 'blocks'"):
        model.blocks[1](torch.randn(1, 4, 16))


def test_models_that_loop_over_their_blocks_run_through_the_stage():
    # EVA's forward walks `for blk in self.blocks: x = blk(x, rope=rope)`: iterating the stage yields one step
    # per reversible run, so the loop runs the stage (and the memory-free Function), not the original blocks
    model = timm.create_model("eva02_tiny_patch14_224", img_size=28, patch_size=14, embed_dim=16, depth=3,
                              num_heads=2, num_classes=3)
    converted = revtal.convert(copy.deepcopy(model), "re2")
    calls = []
    stage = reversible_stages(converted)[0]
    original = stage._memory_free
    stage._memory_free = lambda *a: calls.append(1) or original(*a)
    out = converted(torch.randn(1, 3, 28, 28))
    out.sum().backward()
    assert calls == [1]
    assert not torch.equal(out, model(torch.randn(1, 3, 28, 28)))


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # control flow on values: not traceable
            return x + self.fc(x)
        return x


class _Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(_DataDependent(), _DataDependent())

    def forward(self, x):
        return self.blocks(x)


def test_unconvertible_block_named_with_type_and_reason():
    family = register_family(Family("test-untraceable", "tests", lambda: [BlockRule(_DataDependent)]))
    try:
        with pytest.raises(TypeError, match=r"blocks\.0: .*_DataDependent cannot be traced with torch\.fx"):
            revtal.convert(_Holder(), families=["test-untraceable"])
    finally:
        FAMILIES.pop(family.name)


def test_a_whole_converted_model_pickles(tmp_path):
    # traced branches are compiled functions; they pickle as their source (torch.save of the whole model)
    model = revtal.convert(tiny_vit(depth=2), "re2")
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), loaded(x))
    (loaded(x) ** 2).sum().backward()
    assert all(p.grad is not None for p in loaded.blocks.parameters())


def test_selfcheck_command_lives_outside_the_engine(capsys):
    from revtal.cli import main

    assert main(["selfcheck"]) == 0
    assert "0 failed" in capsys.readouterr().out
    assert not any(p.name in ("errmap.py", "selfcheck.py") for p in
                   (Path(revtal.__file__).parent / "reversible").iterdir())
