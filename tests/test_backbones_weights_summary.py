"""A checkpoint of another model gets a one-line summary (counts, a few keys, the likely cause), not a key dump."""

import pytest
import torch
from torch import nn

from revtal.backbones.weights import CheckpointMismatchError, load_model_state
from revtal.engine.config import config_from_dict
from revtal.engine.model import build_model


def tal_model(num_classes=2, **backbone):
    config = config_from_dict({
        "data": {"num_frames": 8, "img_size": 16},
        "backbone": {"name": "vit_tiny_video", "options": {"patch_size": 8, "tubelet_size": 2, "depth": 2, "embed_dim": 32},
                     "losa": {"clip_frames": 4, "dim": 32}, **backbone},
        "localizer": {"options": {"embed_dim": 32, "head_dim": 32, "num_heads": 2, "window_size": 3,
                                  "num_branch_blocks": 1, "regression_ranges": [[0, 2], [2, 10000]]}},
    }, source="test")
    return build_model(config, num_classes)


def summary_of(module, state) -> str:
    with pytest.raises(CheckpointMismatchError) as error:
        load_model_state(module, state, source="ckpt.pt")
    first_line = str(error.value).splitlines()[0]
    assert first_line.startswith("checkpoint ckpt.pt does not fit this model: ")
    return first_line


def test_summary_counts_keys_and_shows_only_a_few():
    model = tal_model(mode="conventional")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    line = summary_of(model, state)
    n = len(state)
    assert f"{n} missing (" in line and f"{n} unexpected (" in line and line.count("module.") <= 4
    assert len(line) < 600
    assert "extra prefix 'module.'" in line


def test_a_bare_backbone_checkpoint_is_recognised():
    model = tal_model(mode="conventional")
    backbone_state = {k.split(".", 1)[1]: v for k, v in model.state_dict().items() if k.startswith("extractor.")}
    line = summary_of(model, backbone_state)
    assert "holds only a part of the model" in line and "pretrained" in line


def test_other_sizes_are_recognised():
    line = summary_of(tal_model(num_classes=3, mode="conventional"), tal_model(num_classes=2, mode="conventional").state_dict())
    assert "shape-mismatched" in line and "missing" not in line and "other sizes" in line


def test_another_mode_is_recognised():
    losa, plain = tal_model(mode="losa"), tal_model(mode="frozen")
    line = summary_of(losa, plain.state_dict())
    assert "another backbone.mode" in line
    assert f"{len(set(losa.state_dict()) - set(plain.state_dict()))} missing (" in line
    assert "another architecture" in summary_of(plain, {"head.weight": torch.zeros(1), "fc.bias": torch.zeros(1)})


def test_a_matching_checkpoint_loads():
    source, target = tal_model(mode="conventional"), tal_model(mode="conventional")
    torch.manual_seed(1)
    for p in source.parameters():
        nn.init.normal_(p)
    load_model_state(target, source.state_dict(), source="ckpt.pt")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
