"""revtal plan's validation: a training step simulated on fake tensors allocates exactly what the same step
allocates on real CPU tensors, in every training mode and for three small recipes (a video ViT with bf16 autocast,
a 3-D ResNet with BatchNorm, Video Swin). Exact equality: both sides run the same ops on tensors of the same
shapes, dtypes and strides, and the meter counts storages, not values; no tolerance is needed. The one input a
simulation cannot know, how many low bits of its output streams an exact stage must store (it depends on the
values), is handed over from the real run; without it the simulation assumes the stated worst case
(tests/test_bench_plan.py checks that this bounds the real step)."""

from __future__ import annotations

import pytest

from revtal.bench.plan import PLAN_MODES, plan_recipe
from revtal.engine.config import config_from_dict

LOCALIZER = {"options": {"embed_dim": 32, "head_dim": 32, "num_heads": 4, "window_size": 3, "num_branch_blocks": 1,
                         "regression_ranges": [[0, 4], [4, 10000]]}}
SCHEDULE = {"alpha0": 1.0, "beta0": 0.125, "alpha_end": 0.5, "beta_end": 0.75}
RECIPES = {
    "vit_bf16": {
        "data": {"num_frames": 16, "img_size": 32, "batch_size": 2},
        "backbone": {"name": "vit_tiny_video", "options": {"patch_size": 16, "tubelet_size": 2, "depth": 4},
                     "schedule": SCHEDULE, "losa": {"clip_frames": 8}},
        "localizer": LOCALIZER, "optim": {"amp": "bf16"},
    },
    "r3d": {
        "data": {"num_frames": 16, "img_size": 32, "batch_size": 1},
        "backbone": {"name": "r3d_18", "schedule": SCHEDULE, "losa": {"clip_frames": 8}},
        "localizer": LOCALIZER,
    },
    "swin": {
        "data": {"num_frames": 8, "img_size": 32, "batch_size": 1},
        "backbone": {"name": "swin3d_t", "schedule": SCHEDULE, "losa": {"clip_frames": 4}},
        "localizer": LOCALIZER,
    },
}


@pytest.mark.parametrize("mode", list(PLAN_MODES))
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_simulated_step_allocates_exactly_what_the_real_cpu_step_allocates(recipe, mode):
    config = config_from_dict(RECIPES[recipe])
    real = plan_recipe(config, mode, steps=1, classes=3, fake=False, rules="cpu")
    simulated = plan_recipe(config, mode, steps=1, classes=3, fake=True, rules="cpu",
                            exact_stream_bits=real.exact_stream_bits)
    assert simulated == real
    assert real.peak_bytes == sum(real.split.values())
    assert real.split["params"] > 0 and real.split["activations"] > 0
