import os

import pytest
import torch

# Keep tests single-threaded and deterministic on shared 2-core machines.
torch.set_num_threads(1)
os.environ.setdefault(
    "TSDFM_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "tsdfm")
)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
