import os

import pytest
import torch

# The suite runs as two xdist workers on a 2-core machine: one intra-op thread each avoids oversubscription.
torch.set_num_threads(int(os.environ.get("REVTAL_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
