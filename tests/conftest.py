import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The study drivers' library (studies/studylib) is not installed: tests import it from the tree,
# as `python studies/NAME.py` does.
sys.path.insert(0, str(ROOT / "studies"))

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
    """Import a user tool (scripts/) or a study driver (studies/) as a module by its name."""
    import importlib.util

    def load(name: str):
        path = ROOT / "scripts" / f"{name}.py"
        path = path if path.is_file() else ROOT / "studies" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def prepare_texts(tmp_path):
    """Prepare a list of documents as a text corpus under ``tmp_path/data`` (BPE of 300 ids,
    blocks of 24 tokens, 10% validation, 20% test) and return its directory."""
    import json

    from tsdfm.data import DataSpec, prepare_data

    def prepare(texts: list[str]):
        path = tmp_path / "corpus.jsonl"
        path.write_text(
            "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
        )
        spec = DataSpec(
            corpus=str(path), seq_len=24, vocab_size=300, valid_fraction=0.1, test_fraction=0.2
        )
        prepare_data(spec, tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
        return tmp_path / "data"

    return prepare
