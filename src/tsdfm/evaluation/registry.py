"""Turn ``--evaluators`` specs into :class:`Evaluator` objects, each built once per run.

Spec forms:

* ``truth``: the exact ``markov`` chain of the data directory.
* ``smollm2-135m`` or ``smollm2-135m=DIR``: the pretrained GGUF evaluator (default DIR: the
  cache, filled by ``tsdfm evaluators fetch smollm2``).
* ``NAME=DIR``: a tsdfm causal LM directory (``config.json`` with ``model_type: causal``) or a
  Hugging Face model directory; ``NAME=DIR/FILE.gguf`` or a directory with one ``.gguf``
  file loads that GGUF file.

Without specs the defaults are ``truth`` for ``markov`` data, else the run layout's
``evaluator-small/model`` (as ``ar-small``), ``evaluator-large/model`` (``ar-large``) beside the
data directory, and SmolLM2 when it is in the cache; whichever exist.
"""

from __future__ import annotations

import json
from pathlib import Path

from tsdfm.distributed import as_device
from tsdfm.errors import TsdfmError
from tsdfm.evaluation.evaluators import Evaluator, HFEvaluator, ProjectEvaluator, TruthEvaluator
from tsdfm.evaluation.fetch import SMOLLM2, evaluator_dir, gguf_path
from tsdfm.evaluation.hf import find_gguf

RUN_LAYOUT = {"ar-small": "evaluator-small", "ar-large": "evaluator-large"}


def _is_project_model(directory: Path) -> bool:
    try:
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "tsdfm_version" in cfg


def make_evaluator(spec: str, data=None, cache_dir: Path | None = None, device="auto") -> Evaluator:
    """``device``: ``auto`` (the GPU when CUDA is available, else the CPU), ``cpu``, ``cuda`` or
    a torch device string (``cuda:1``); the truth evaluator is exact arithmetic on the CPU."""
    device = str(as_device(device))
    name, _, path = spec.partition("=")
    name = name.strip()
    if not name:
        raise TsdfmError(f"evaluator spec {spec!r} needs a name: NAME=DIR, truth or smollm2-135m")
    if name == "truth" and not path:
        chain = data.chain() if data is not None else None
        if chain is None:
            raise TsdfmError(
                "the truth evaluator needs --data pointing at prepared markov data (only the "
                "markov corpus has a known distribution)"
            )
        return TruthEvaluator(chain)
    if name == SMOLLM2.name and not path:
        target = gguf_path(SMOLLM2, cache_dir)
        if not target.is_file():
            raise TsdfmError(
                f"{SMOLLM2.name} is not in the cache ({target}); run `tsdfm evaluators fetch "
                "smollm2` first, or pass smollm2-135m=DIR"
            )
        return HFEvaluator(name, target.parent, target.name, SMOLLM2.bos_token, device=device)
    if not path:
        raise TsdfmError(
            f"evaluator {name!r} needs a location: {name}=DIR (a tsdfm causal LM or a Hugging "
            "Face model directory)"
        )
    p = Path(path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise TsdfmError(f"evaluator {name}: GGUF file not found: {p}")
        return HFEvaluator(name, p.parent, p.name, _bos_for(name), device=device)
    if not p.is_dir():
        raise TsdfmError(f"evaluator {name}: directory not found: {p}")
    if _is_project_model(p):
        return ProjectEvaluator(name, p, device=device)
    gguf = find_gguf(p)
    return HFEvaluator(name, p, gguf, _bos_for(name) if gguf else "auto", device=device)


def _bos_for(name: str) -> str | None:
    return SMOLLM2.bos_token if name == SMOLLM2.name else "auto"


def default_specs(
    data_dir: Path | None, is_markov: bool, cache_dir: Path | None = None
) -> list[str]:
    if is_markov:
        return ["truth"]
    specs = []
    if data_dir is not None:
        for name, stage in RUN_LAYOUT.items():
            model_dir = Path(data_dir).parent / stage / "model"
            if model_dir.is_dir():
                specs.append(f"{name}={model_dir}")
    if gguf_path(SMOLLM2, cache_dir).is_file():
        specs.append(SMOLLM2.name)
    if not specs:
        raise TsdfmError(
            "no evaluator found: pass --evaluators NAME=DIR ... (trained with `tsdfm train causal "
            "--role evaluator-small`), or fetch SmolLM2 with `tsdfm evaluators fetch smollm2`"
        )
    return specs


def build_evaluators(
    specs: list[str], data=None, cache_dir: Path | None = None, device: str = "auto"
) -> dict[str, Evaluator]:
    """One evaluator per name (a repeated name is an error: results are keyed by name)."""
    out: dict[str, Evaluator] = {}
    for spec in specs:
        ev = make_evaluator(spec, data, cache_dir, device)
        if ev.name in out:
            raise TsdfmError(f"evaluator name {ev.name!r} is given twice; names must be unique")
        out[ev.name] = ev
    return out


__all__ = ["build_evaluators", "default_specs", "evaluator_dir", "make_evaluator"]
