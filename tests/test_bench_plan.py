"""revtal plan: the live-bytes meter, the simulated training steps and the CUDA allocator model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from revtal.bench.plan import (
    LiveBytes, cuda_block_size, cuda_reserved, plan_recipe, simulate_steps,
)
from revtal.engine.config import config_from_dict

MiB = 1 << 20


def test_live_bytes_counts_a_storage_once_for_its_views_and_in_place_results():
    with LiveBytes() as meter:
        x = torch.zeros(1000)  # 4000 bytes
        view = x[10:20].view(2, 5)
        x.add_(1)
        view.mul_(2)
        assert meter.current == 4000
        y = x * 2
        assert meter.current == 8000 and meter.peak == 8000
        del x, view
        assert meter.current == 4000  # the storage goes when its last view does
        del y
    assert meter.current == 0 and meter.peak == 8000


def test_live_bytes_peak_includes_the_inputs_live_while_an_output_is_made():
    with LiveBytes() as meter:
        a = torch.ones(256)
        b = (a + 1) * 3  # a + 1 is alive when the product is made
        del a
    assert meter.peak == 3 * 1024 and meter.current == 1024
    del b


def _mlp_step(fake: bool):
    with (FakeTensorMode() if fake else torch.enable_grad()):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(100, 200), nn.GELU(), nn.LayerNorm(200), nn.Linear(200, 10))
        optimizer = torch.optim.AdamW(model.parameters())
        return simulate_steps(model, optimizer, lambda: model(torch.randn(64, 100)).pow(2).mean(), steps=2)


def test_simulated_steps_on_fake_tensors_equal_the_real_steps_byte_for_byte_with_the_split():
    real, fake = _mlp_step(False), _mlp_step(True)
    assert fake == real
    params = (100 * 200 + 200 + 200 * 2 + 200 * 10 + 10) * 4
    assert real.split["params"] == params
    # AdamW's state: exp_avg and exp_avg_sq per parameter plus one float32 step counter per parameter tensor
    assert real.split["optimizer"] == 2 * params + 6 * 4
    assert real.peak_bytes == sum(real.split.values())


def test_cuda_block_size_rounds_to_512_bytes():
    assert [cuda_block_size(n) for n in (0, 1, 512, 513, 4000)] == [0, 512, 512, 1024, 4096]


def test_cuda_reserved_models_the_caching_allocator_pools_and_reuse():
    # small requests share one 2 MiB segment
    assert cuda_reserved([(0, 1000), (1, 1000), (2, 1000)]) == 2 * MiB
    # a 5 MiB request opens a 20 MiB large segment; a second one is split from its rest
    assert cuda_reserved([(0, 5 * MiB), (1, 5 * MiB)]) == 20 * MiB
    # 30 MiB is its own segment rounded to 2 MiB; freed, it is reused for 25 MiB without a new segment
    assert cuda_reserved([(0, 29 * MiB + 1), (0, -1), (1, 25 * MiB)]) == 30 * MiB
    # freed neighbours merge: two 6 MiB blocks freed serve a 12 MiB request from the same 20 MiB segment
    events = [(0, 6 * MiB), (1, 6 * MiB), (0, -1), (1, -1), (2, 12 * MiB)]
    assert cuda_reserved(events) == 20 * MiB


TINY = {
    "data": {"num_frames": 16, "img_size": 32, "batch_size": 1},
    "backbone": {"name": "vit_tiny_video", "options": {"patch_size": 16, "tubelet_size": 2, "depth": 4}},
    "localizer": {"options": {"embed_dim": 32, "head_dim": 32, "num_heads": 4, "window_size": 3,
                              "num_branch_blocks": 1, "regression_ranges": [[0, 4], [4, 10000]]}},
}


@pytest.mark.parametrize("mode", ["conventional", "dr2net_exact"])
def test_plan_of_a_recipe_on_fake_tensors_equals_the_real_cpu_step(mode):
    config = config_from_dict(TINY)
    real = plan_recipe(config, mode, classes=3, fake=False)
    simulated = plan_recipe(config, mode, classes=3, fake=True)
    assert simulated == real
    assert real.split["grads"] > 0 and real.split["activations"] > 0
