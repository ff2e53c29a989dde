"""DDP (gloo, 2 processes) through a reversible stage: gradients equal one process on the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import revtal
from tests.helpers import tiny_vit


def _model():
    return revtal.convert(tiny_vit(depth=3).double(), "dr2net", alpha=0.3, beta=0.7)


def _batch():
    g = torch.Generator().manual_seed(7)
    return torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)


def _worker(rank, world, init_file, out_dir, ddp_kwargs):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = DDP(_model(), **ddp_kwargs)
        x = _batch().chunk(world)[rank]
        (model(x) ** 2).mean().backward()
        torch.save([p.grad for p in model.module.parameters()], os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("ddp_kwargs", [{}, {"find_unused_parameters": True}, {"static_graph": True}])
def test_ddp_gradients_equal_single_process(tmp_path, ddp_kwargs):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), ddp_kwargs), nprocs=2, join=True)
    single = _model()
    (single(_batch()) ** 2).mean().backward()
    expected = [p.grad for p in single.parameters()]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
