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


@pytest.fixture
def load_script():
    """Import a file under scripts/ as a module (scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
