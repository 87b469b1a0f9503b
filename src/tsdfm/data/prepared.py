"""A prepared data directory, as later stages see it.

Layout: ``train.bin``, ``valid.bin``, ``test.bin`` (token blocks), ``tokenizer/``,
``chain.json`` (markov only) and ``manifest.json``, which is written last and carries
``"complete": true``; a directory without it is not data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsdfm.artifacts import sha256_file
from tsdfm.data.blocks import TokenBlocks
from tsdfm.data.markov import MarkovChain
from tsdfm.data.spec import DataSpec
from tsdfm.data.tokenizer import Tokenizer
from tsdfm.errors import TsdfmError

MANIFEST = "manifest.json"
CHAIN = "chain.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "valid", "test")


@dataclass
class PreparedData:
    directory: Path
    manifest: dict[str, Any]
    tokenizer: Tokenizer
    spec: DataSpec

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    def split(self, name: str) -> TokenBlocks:
        """Memory-mapped blocks of split `name` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise TsdfmError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        entry = self.manifest["splits"][name]
        return TokenBlocks(self.directory / entry["file"], self.seq_len, self.manifest["dtype"])

    def chain(self) -> MarkovChain | None:
        """The generating chain for the markov corpus (the truth evaluator), else None."""
        if not self.spec.is_markov:
            return None
        path = self.directory / CHAIN
        try:
            return MarkovChain.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise TsdfmError(f"cannot read {path} ({e}); re-run `tsdfm data prepare`") from None


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete data directory; None when there is none or it is partial."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        return None
    return manifest


def load_prepared(out_dir: Path, verify: bool = False) -> PreparedData:
    """Open prepared data; with verify=True also check every .bin against its sha256."""
    directory = Path(out_dir)
    manifest = read_manifest(directory)
    if manifest is None:
        raise TsdfmError(
            f"no complete prepared data in {directory}: run `tsdfm data prepare` first"
        )
    try:
        spec = DataSpec.from_dict(manifest["spec"])
        splits = {name: manifest["splits"][name] for name in SPLITS}
        expected_fp = manifest["tokenizer"]["fingerprint"]
    except (KeyError, TypeError) as e:
        raise TsdfmError(
            f"{directory / MANIFEST} lacks {e}; delete {directory} and re-run `tsdfm data prepare`"
        ) from None
    tokenizer = Tokenizer.load(directory / TOKENIZER_DIR)
    if tokenizer.fingerprint() != expected_fp:
        raise TsdfmError(
            f"the tokenizer in {directory / TOKENIZER_DIR} is not the one this data was "
            f"encoded with; delete {directory} and re-run `tsdfm data prepare`"
        )
    if verify:
        for name, entry in splits.items():
            path = directory / entry["file"]
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                raise TsdfmError(
                    f"{path} is missing or does not match its sha256 in the manifest ({name} "
                    f"split is corrupt); delete {directory} and re-run `tsdfm data prepare`"
                )
    return PreparedData(directory=directory, manifest=manifest, tokenizer=tokenizer, spec=spec)
