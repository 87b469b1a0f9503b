"""Load a Hugging Face causal LM and its tokenizer from a local directory, offline.

Evaluators nobody here trained keep gen-PPL honest: a model the project trained shares its
data and its blind spots. Any causal LM saved with ``save_pretrained`` works, and so does a
GGUF file in the directory (``gguf_file=``; transformers de-quantizes it to float32, which needs
the ``gguf`` package). Nothing is fetched from a hub: ``local_files_only=True`` always.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from tsdfm.errors import TsdfmError

INSTALL_HINT = "install the evaluation extra: pip install 'tsdfm[eval]'"


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise TsdfmError(f"Hugging Face evaluators need transformers ({e}); {INSTALL_HINT}") from e
    return transformers


def dtype_kwarg() -> str:
    """``dtype`` on recent transformers, ``torch_dtype`` on releases that predate it."""
    from transformers import PreTrainedModel

    params = inspect.signature(PreTrainedModel.from_pretrained).parameters
    if "torch_dtype" in params and "dtype" not in params:
        return "torch_dtype"
    return "dtype"


def find_gguf(directory: Path) -> str | None:
    """The single ``*.gguf`` file in ``directory`` (None if there is none)."""
    files = sorted(p.name for p in Path(directory).glob("*.gguf"))
    if len(files) > 1:
        raise TsdfmError(
            f"{directory} holds several GGUF files ({', '.join(files)}); name one as DIR/FILE.gguf"
        )
    return files[0] if files else None


def load_hf_causal_lm(
    directory: str | Path, gguf_file: str | None = None, device: str = "cpu"
) -> tuple[Any, Any]:
    """(model in eval mode, float32, on ``device``; its tokenizer) from a local directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TsdfmError(f"evaluator directory not found: {directory}")
    tf = _transformers()
    kw: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        if not (directory / gguf_file).is_file():
            raise TsdfmError(f"GGUF file not found: {directory / gguf_file}")
        try:
            import gguf  # noqa: F401
        except ImportError as e:
            raise TsdfmError(f"loading {gguf_file} needs the gguf package; {INSTALL_HINT}") from e
        kw["gguf_file"] = gguf_file
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(directory), **kw)
        model = tf.AutoModelForCausalLM.from_pretrained(
            str(directory), **kw, **{dtype_kwarg(): torch.float32}
        )
    except (OSError, ValueError, KeyError) as e:
        raise TsdfmError(
            f"{directory} does not hold a loadable Hugging Face causal LM and tokenizer ({e}); "
            "it needs config.json + weights + tokenizer files, or a GGUF file"
        ) from e
    return model.to(device).eval(), tokenizer


def context_length(model: Any, cap: int = 2048) -> int:
    """The model's maximum positions (capped: longer windows cost memory, not accuracy here)."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 1:
            return min(value, cap)
    return min(1024, cap)
