"""``save_pretrained`` / ``from_pretrained``: safetensors weights + ``config.json`` + manifest.

A model directory is self-describing: its config (architecture, the flow it was trained on, the
tokenizer fingerprint), its weights, a copy of its tokenizer, and a manifest of checksums. The
directory is assembled under a temporary name and renamed into place, so a crash never leaves a
half-written model where a reader could load it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tsdfm import __version__
from tsdfm.artifacts import atomic_write_json, read_json, verify_manifest, write_manifest
from tsdfm.errors import TsdfmError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER_DIR = "tokenizer"

_REGISTRY: dict[str, type[PretrainedMixin]] = {}


class PretrainedMixin:
    """Adds save/load to an ``nn.Module`` whose constructor takes one config dataclass."""

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    config: Any

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "model_type" in cls.__dict__:
            _REGISTRY[cls.model_type] = cls

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None) -> Path:
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
            cfg = {
                "model_type": self.model_type,
                "tsdfm_version": __version__,
                **dataclasses.asdict(self.config),
            }
            atomic_write_json(tmp / CONFIG, cfg)
            if tokenizer is not None:
                tokenizer.save(tmp / TOKENIZER_DIR)
            write_manifest(tmp)
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                directory.rename(old)
                tmp.rename(directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu", verify: bool = True):
        model, _ = load_pretrained(directory, map_location, verify, expect=cls)
        return model


def read_model_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise TsdfmError(f"model directory not found: {directory}")
    return read_json(directory / CONFIG, "model config")


def load_pretrained(
    directory: str | Path,
    map_location: str = "cpu",
    verify: bool = True,
    expect: type | None = None,
) -> tuple[nn.Module, Any]:
    """Load any tsdfm model directory; returns ``(model, tokenizer or None)``."""
    from tsdfm.data.tokenizer import Tokenizer

    directory = Path(directory)
    raw = read_model_config(directory)
    if verify:
        verify_manifest(directory)
    model_type = raw.pop("model_type", None)
    raw.pop("tsdfm_version", None)
    cls = _REGISTRY.get(model_type)
    if cls is None:
        raise TsdfmError(f"{directory / CONFIG}: unknown model_type {model_type!r}")
    if expect is not None and not issubclass(cls, expect) and not issubclass(expect, cls):
        raise TsdfmError(f"{directory} holds a {model_type!r} model, not a {expect.model_type!r}")
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = set(raw) - names
    if unknown:
        raise TsdfmError(f"{directory / CONFIG} has unknown keys {sorted(unknown)}; newer tsdfm?")
    config = cls.config_class(**raw)
    model = cls(config)
    try:
        state = load_file(str(directory / WEIGHTS), device=map_location)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on corrupt files
        raise TsdfmError(f"{directory / WEIGHTS} cannot be read ({e}); the file is corrupt") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TsdfmError(
            f"{directory / WEIGHTS} does not match its config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    model.eval()
    tokenizer = None
    if (directory / TOKENIZER_DIR).is_dir():
        tokenizer = Tokenizer.load(directory / TOKENIZER_DIR)
        fp = getattr(config, "tokenizer_fingerprint", None)
        if fp and tokenizer.fingerprint() != fp:
            raise TsdfmError(
                f"{directory / TOKENIZER_DIR} does not match the tokenizer the model was trained "
                "with (fingerprint differs)"
            )
    return model, tokenizer


def config_json(directory: Path) -> str:
    return json.dumps(read_model_config(directory), indent=2)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def same_outputs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(a, b))
