"""The data stage: corpus -> tokenizer -> packed train/valid/test blocks + manifest.

Atomicity: everything is written into a temporary sibling directory and renamed onto
``out_dir`` at the end, with ``manifest.json`` (``"complete": true``) written last inside it,
so an interrupted run leaves either nothing or the previous complete data.

Idempotence: a complete directory prepared from the same determining spec fields and the
same source checksum is returned as is; a different spec or source is an error rather than a
silent overwrite of data that models may have been trained on.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tsdfm.artifacts import (
    atomic_write_json,
    ensure_writable,
    removing_new_dirs_on_error,
    sha256_file,
    sha256_json,
)
from tsdfm.data.blocks import block_dtype, pack_documents, write_blocks
from tsdfm.data.corpora import known_source_sha256, load_corpus, split_of
from tsdfm.data.markov import MarkovChain
from tsdfm.data.prepared import (
    CHAIN,
    MANIFEST,
    SPLITS,
    TOKENIZER_DIR,
    PreparedData,
    load_prepared,
    read_manifest,
)
from tsdfm.data.spec import DataSpec, MarkovSpec, diff_keys
from tsdfm.data.tokenizer import Tokenizer
from tsdfm.errors import TsdfmError

__all__ = [
    "DataSpec",
    "MarkovSpec",
    "PreparedData",
    "default_cache_dir",
    "load_prepared",
    "prepare_data",
]

log = logging.getLogger(__name__)
_FORMAT = 1
_FRACTION_HINT = {
    "train": "",
    "valid": " a larger data.valid_fraction",
    "test": " a larger data.test_fraction",
}
_ENCODE_CHUNK = 512  # documents per encode_batch call: big enough for threads, small for tqdm


def default_cache_dir() -> Path:
    """``$TSDFM_CACHE`` or ``~/.cache/tsdfm``: downloads and parsed corpora live here."""
    env = os.environ.get("TSDFM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tsdfm"


def prepare_data(
    spec: DataSpec, out_dir: Path, cache_dir: Path | None = None, progress: bool = True
) -> PreparedData:
    """Prepare `spec` into `out_dir` (or confirm it is already there) and open it."""
    spec.validate()
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    existing = _existing_manifest(out_dir)
    if existing is not None:
        _check_same(existing, spec, out_dir, cache_dir)
        log.info("data up to date in %s", out_dir)
        return load_prepared(out_dir)

    ensure_writable(out_dir)
    with removing_new_dirs_on_error(out_dir):
        _build_into(spec, out_dir, cache_dir, progress)
    log.info("prepared %s into %s", spec.corpus, out_dir)
    return load_prepared(out_dir)


def _build_into(spec: DataSpec, out_dir: Path, cache_dir: Path, progress: bool) -> None:
    """Build in a temporary sibling, then rename it onto ``out_dir`` (manifest written last)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build = _build_markov if spec.is_markov else _build_text
        manifest = build(spec, tmp, cache_dir, progress)
        manifest.update(
            format=_FORMAT,
            corpus=spec.corpus,
            spec=spec.to_dict(),
            seq_len=spec.seq_len,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            complete=True,
        )
        atomic_write_json(tmp / MANIFEST, manifest)
        try:
            if out_dir.exists():
                out_dir.rmdir()  # _existing_manifest allowed only an empty directory here
            os.replace(tmp, out_dir)
        except OSError as e:  # another process filled out_dir meanwhile
            raise TsdfmError(
                f"{out_dir} was written by someone else while preparing ({e}); run again to "
                "reuse it, or choose another --out"
            ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _existing_manifest(out_dir: Path) -> dict[str, Any] | None:
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise TsdfmError(f"{out_dir} is a file, not a data directory; choose another --out")
    manifest = read_manifest(out_dir)
    if manifest is None and any(out_dir.iterdir()):
        raise TsdfmError(
            f"{out_dir} exists but holds no complete prepared data (no manifest.json with "
            '"complete": true); delete it or choose another --out'
        )
    return manifest


def _check_same(manifest: dict[str, Any], spec: DataSpec, out_dir: Path, cache_dir: Path) -> None:
    """Raise unless the existing data came from the same determining spec and source."""
    try:
        old = DataSpec.from_dict(manifest["spec"]).determining()
    except (KeyError, TypeError, TsdfmError):
        old = {}
    diffs = diff_keys(old, spec.determining())
    if diffs:
        raise TsdfmError(
            f"{out_dir} holds data prepared with a different spec ({'; '.join(diffs)}); use "
            f"another --out or delete {out_dir}"
        )
    if spec.is_markov:
        current = _markov_source(_chain_of(spec.markov))["sha256"]
    else:
        current = known_source_sha256(spec.corpus, cache_dir)
    recorded = manifest.get("source", {}).get("sha256")
    if current is not None and current != recorded:
        raise TsdfmError(
            f"{out_dir} was prepared from a different version of corpus {spec.corpus!r} "
            f"(source sha256 {recorded} there, {current} now); use another --out or delete "
            f"{out_dir}"
        )


def _chain_of(m: MarkovSpec) -> MarkovChain:
    return MarkovChain(m.vocab_size, m.order, m.alpha, m.eps, m.seed)


def _markov_source(chain: MarkovChain) -> dict[str, Any]:
    params = chain.to_dict()
    return {"kind": "markov", "params": params, "sha256": sha256_json(params)}


def _build_markov(spec: DataSpec, tmp: Path, cache_dir: Path, progress: bool) -> dict[str, Any]:
    """Sample each split from the chain; split i uses seed ``1000 * seed + i`` (i = 1, 2, 3),
    so splits are independent of each other and of the chain's own Dirichlet draw."""
    m, L = spec.markov, spec.seq_len
    t0 = time.perf_counter()
    chain = _chain_of(m)
    tokenizer = Tokenizer.identity(m.vocab_size)
    tokenizer.save(tmp / TOKENIZER_DIR)
    atomic_write_json(tmp / CHAIN, chain.to_dict())
    dtype = block_dtype(tokenizer.vocab_size)
    sizes = {"train": m.num_train, "valid": m.num_valid, "test": m.num_test}
    splits = {}
    for i, name in enumerate(tqdm(SPLITS, desc="sampling markov", disable=not progress), 1):
        blocks = chain.sample(sizes[name], L, seed=1000 * m.seed + i)
        splits[name] = _write_split(tmp, name, blocks, tokenizer.vocab_size, sizes[name], 0)
    return {
        "source": _markov_source(chain),
        "tokenizer": _tokenizer_entry(tokenizer),
        "dtype": dtype.name,
        "splits": splits,
        "markov": {
            "entropy_rate": chain.entropy_rate(),
            "initial_entropy": chain.initial_entropy(),
            "expected_nll_per_token": chain.expected_nll_per_token(L),
        },
        "timings_s": {"total": round(time.perf_counter() - t0, 3)},
    }


def _build_text(spec: DataSpec, tmp: Path, cache_dir: Path, progress: bool) -> dict[str, Any]:
    timings = {}
    t0 = time.perf_counter()
    corpus = load_corpus(spec.corpus, cache_dir)
    timings["load"] = time.perf_counter() - t0

    docs: dict[str, list[str]] = {name: [] for name in SPLITS}
    for doc in corpus.documents:
        docs[split_of(doc.id, spec.valid_fraction, spec.test_fraction)].append(doc.text)
    log.info("documents per split: %s", {k: len(v) for k, v in docs.items()})

    t0 = time.perf_counter()
    if not docs["train"]:
        raise TsdfmError(f"corpus {spec.corpus!r} put no documents in the train split")
    if spec.tokenizer_path is not None:
        tokenizer = Tokenizer.from_existing(spec.tokenizer_path)
    else:
        tokenizer = Tokenizer.train_bpe(docs["train"], spec.vocab_size, show_progress=progress)
    tokenizer.save(tmp / TOKENIZER_DIR)
    timings["tokenizer"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    splits = {}
    for name in SPLITS:
        ids = _encode(tokenizer, docs[name], f"encoding {name}", progress)
        blocks = pack_documents(ids, spec.seq_len, tokenizer.eos_id)
        if len(blocks) == 0:
            raise TsdfmError(
                f"the {name} split of corpus {spec.corpus!r} has {len(docs[name])} documents, "
                f"too few tokens for one block of seq_len {spec.seq_len}; use a smaller "
                f"data.seq_len,{_FRACTION_HINT[name]} or a larger corpus"
            )
        dropped = sum(len(x) + 1 for x in ids) - blocks.size
        splits[name] = (blocks, len(docs[name]), dropped)
    timings["encode"] = time.perf_counter() - t0

    splits = {
        name: _write_split(tmp, name, blocks, tokenizer.vocab_size, n_docs, dropped)
        for name, (blocks, n_docs, dropped) in splits.items()
    }
    return {
        "source": corpus.source,
        "tokenizer": _tokenizer_entry(tokenizer),
        "dtype": block_dtype(tokenizer.vocab_size).name,
        "splits": splits,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def _encode(tokenizer: Tokenizer, texts: list[str], desc: str, progress: bool) -> list[list[int]]:
    out: list[list[int]] = []
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not progress) as bar:
        for start in range(0, len(texts), _ENCODE_CHUNK):
            chunk = texts[start : start + _ENCODE_CHUNK]
            out.extend(tokenizer.encode_batch(chunk))
            bar.update(len(chunk))
    return out


def _write_split(
    tmp: Path, name: str, blocks: Any, vocab_size: int, documents: int, dropped: int
) -> dict[str, Any]:
    path = tmp / f"{name}.bin"
    write_blocks(path, blocks, vocab_size)
    return {
        "file": path.name,
        "documents": documents,
        "blocks": int(blocks.shape[0]),
        "tokens": int(blocks.size),
        "tokens_dropped": int(dropped),
        "sha256": sha256_file(path),
    }


def _tokenizer_entry(tokenizer: Tokenizer) -> dict[str, Any]:
    return {
        "kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "num_classes": tokenizer.num_classes,
        "mask_id": tokenizer.mask_id,
        "fingerprint": tokenizer.fingerprint(),
    }
