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
    config = _build_config(cls, raw, directory / CONFIG)
    try:
        model = cls(config)
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as e:
        raise _inconsistent(directory, f"the model cannot be built: {e}") from None
    try:
        state = load_file(str(directory / WEIGHTS), device=map_location)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on corrupt files
        raise TsdfmError(f"{directory / WEIGHTS} cannot be read ({e}); the file is corrupt") from e
    check_finite(state, directory / WEIGHTS)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape than config.json implies
        raise _inconsistent(directory, _last_line(e)) from None
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


# Integer fields of the model configs that size a tensor; each must be >= 1.
_SIZES = ("vocab_size", "num_classes", "max_len", "dim", "n_layers", "n_heads")


def _build_config(cls: type, raw: dict[str, Any], path: Path) -> Any:
    """The config dataclass, checked before any tensor is sized from it.

    A manifest proves the files are the ones written, not that they agree: a hand-edited or
    mismatched ``config.json`` must fail here, naming the file, not as a traceback from inside
    a layer constructor (``n_heads: 0`` divides by zero) or a forward pass.
    """
    try:
        config = cls.config_class(**raw)
    except TypeError as e:
        raise _inconsistent(path.parent, str(e)) from None
    for name in _SIZES:
        value = getattr(config, name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _inconsistent(path.parent, f"{name} = {value!r}, a size must be an integer >= 1")
    dim, heads = getattr(config, "dim", None), getattr(config, "n_heads", None)
    if dim is not None and heads is not None and dim % heads:
        raise _inconsistent(path.parent, f"dim = {dim} is not a multiple of n_heads = {heads}")
    return config


def _inconsistent(directory: Path, detail: str) -> TsdfmError:
    return TsdfmError(
        f"{directory / CONFIG} is inconsistent with {directory / WEIGHTS} ({detail[:300]}); "
        "restore the model directory from its source or re-train it"
    )


def _last_line(e: BaseException) -> str:
    """The informative line of a multi-line torch error (``size mismatch for ...``)."""
    return str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity: such a model samples garbage (all-zero ids)
    without any error, which is worse than not loading."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise TsdfmError(
            f"{path} holds non-finite weights (NaN or infinity in {len(bad)} tensor(s), e.g. "
            f"{bad[0]}): the training that wrote it diverged. Re-train it (a lower learning "
            "rate), or use another model"
        )


def config_json(directory: Path) -> str:
    return json.dumps(read_model_config(directory), indent=2)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def same_outputs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(a, b))
