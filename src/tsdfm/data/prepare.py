"""The data stage: corpus -> tokenizer -> packed train/valid/test blocks + manifest.

Atomicity: everything is written into a sibling work directory and renamed onto ``out_dir``
at the end, with ``manifest.json`` (``"complete": true``) written last inside it, so
``out_dir`` holds either nothing or complete data.

Text corpora stream (``tsdfm.data.shards``): documents are read lazily, the tokenizer is
trained on a bounded sample (``data.tokenizer_sample_chars``), shards are encoded by
``num_proc`` processes, and memory does not grow with the corpus. The work directory
``.<out>.partial`` survives an interruption (a kill, Ctrl-C, a full disk) and the next run
resumes at the first unfinished shard; bad input (a ``TsdfmError``) removes it.

Idempotence: a complete directory prepared from the same determining spec fields and the
same source checksum is returned as is; a different spec or source is an error rather than a
silent overwrite of data that models may have been trained on.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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
from tsdfm.data.blocks import block_dtype, write_blocks
from tsdfm.data.corpora import (
    CorpusStream,
    known_source_sha256,
    no_documents_error,
    open_corpus,
    split_of,
)
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
from tsdfm.data.shards import (
    SHARD_CHARS,
    ShardPlan,
    assemble_split,
    encode_corpus,
    shard_marks,
    split_totals,
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
_STATE = "state.json"  # in the work directory: what its shards were made from


def default_cache_dir() -> Path:
    """``$TSDFM_CACHE`` or ``~/.cache/tsdfm``: downloads and parsed corpora live here."""
    env = os.environ.get("TSDFM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tsdfm"


def prepare_data(
    spec: DataSpec,
    out_dir: Path,
    cache_dir: Path | None = None,
    progress: bool = True,
    num_proc: int = 1,
    shard_chars: int = SHARD_CHARS,
) -> PreparedData:
    """Prepare `spec` into `out_dir` (or confirm it is already there) and open it.

    ``num_proc`` processes encode text (1: this process, one thread); the blocks do not
    depend on it. ``shard_chars`` sets the resume granularity (tests make it small).
    """
    spec.validate()
    if not isinstance(num_proc, int) or num_proc < 1:
        raise TsdfmError(f"--num-proc must be a positive integer, got {num_proc!r}")
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    existing = _existing_manifest(out_dir)
    if existing is not None:
        _check_same(existing, spec, out_dir, cache_dir)
        log.info("data up to date in %s", out_dir)
        return load_prepared(out_dir)

    ensure_writable(out_dir)
    with removing_new_dirs_on_error(out_dir):
        if spec.is_markov:
            _build_markov_into(spec, out_dir, progress)
        else:
            _build_text_into(spec, out_dir, cache_dir, progress, num_proc, shard_chars)
    log.info("prepared %s into %s", spec.corpus, out_dir)
    return load_prepared(out_dir)


def _build_markov_into(spec: DataSpec, out_dir: Path, progress: bool) -> None:
    """Build in a temporary sibling, then rename it onto ``out_dir`` (manifest written last)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _publish(spec, tmp, out_dir, _build_markov(spec, tmp, progress))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _build_text_into(
    spec: DataSpec, out_dir: Path, cache_dir: Path, progress: bool, num_proc: int, chars: int
) -> None:
    """Build in the resumable work directory ``.<name>.partial``, then rename it."""
    work = out_dir.parent / f".{out_dir.name}.partial"
    with _locked(work):
        try:
            manifest = _build_text(spec, work, cache_dir, progress, num_proc, chars)
            (work / _STATE).unlink()
            shutil.rmtree(work / "shards")
            (work / _LOCK).unlink()
            _publish(spec, work, out_dir, manifest)
        except TsdfmError:
            shutil.rmtree(work, ignore_errors=True)  # bad input: a rerun would fail the same
            raise


_LOCK = ".lock"


@contextmanager
def _locked(work: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``work`` so that two runs never write the same shards."""
    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work / _LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TsdfmError(
                f"{work} is being prepared by another process; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def _publish(spec: DataSpec, tmp: Path, out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest last inside `tmp`, then rename `tmp` onto ``out_dir``."""
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


def _build_markov(spec: DataSpec, tmp: Path, progress: bool) -> dict[str, Any]:
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


def _build_text(
    spec: DataSpec, work: Path, cache_dir: Path, progress: bool, num_proc: int, chars: int
) -> dict[str, Any]:
    timings = {}
    t0 = time.perf_counter()
    stream = open_corpus(spec.corpus, cache_dir)
    state = {
        "format": _FORMAT,
        "spec": spec.determining(),
        "source_sha256": stream.source["sha256"],
        "shard_chars": chars,
    }
    tokenizer = _resume_or_start(work, state)
    timings["source"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if tokenizer is None:
        tokenizer = _make_tokenizer(spec, stream, progress)
        tokenizer.save(work / TOKENIZER_DIR)
        atomic_write_json(work / _STATE, {**state, "tokenizer": tokenizer.fingerprint()})
    timings["tokenizer"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dtype = block_dtype(tokenizer.vocab_size).name
    plan = ShardPlan(spec.valid_fraction, spec.test_fraction, dtype, tokenizer.eos_id, chars)
    n = encode_corpus(stream.documents(), work, work / TOKENIZER_DIR, plan, num_proc, progress)
    marks = shard_marks(work, n)
    timings["encode"] = time.perf_counter() - t0
    if not any(split_totals(marks, name)[0] for name in SPLITS):
        raise no_documents_error(spec.corpus)
    log.info("documents per split: %s", {k: split_totals(marks, k)[0] for k in SPLITS})

    for name in SPLITS:
        documents, tokens = split_totals(marks, name)
        if tokens < spec.seq_len:
            raise TsdfmError(
                f"the {name} split of corpus {spec.corpus!r} has {documents} documents, "
                f"too few tokens for one block of seq_len {spec.seq_len}; use a smaller "
                f"data.seq_len,{_FRACTION_HINT[name]} or a larger corpus"
            )
    t0 = time.perf_counter()
    splits = {name: assemble_split(work, marks, name, spec.seq_len, dtype) for name in SPLITS}
    timings["assemble"] = time.perf_counter() - t0
    return {
        "source": stream.source,
        "tokenizer": _tokenizer_entry(tokenizer),
        "dtype": dtype,
        "splits": splits,
        "shards": n,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def _resume_or_start(work: Path, state: dict[str, Any]) -> Tokenizer | None:
    """The tokenizer of a resumable work directory made from the same `state`, else None
    after emptying it (keeping the lock): a different spec or source starts over."""
    try:
        old = json.loads((work / _STATE).read_text(encoding="utf-8"))
        fingerprint = old.pop("tokenizer")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        old, fingerprint = None, None
    if old == state:
        try:
            tokenizer = Tokenizer.load(work / TOKENIZER_DIR)
            if tokenizer.fingerprint() == fingerprint:
                log.info("resuming the preparation in %s", work)
                return tokenizer
        except TsdfmError:
            pass
    for child in work.iterdir():
        if child.name != _LOCK:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    return None


def _make_tokenizer(spec: DataSpec, stream: CorpusStream, progress: bool) -> Tokenizer:
    if spec.tokenizer_path is not None:
        return Tokenizer.from_existing(spec.tokenizer_path)
    sample = _training_sample(spec, stream)
    first = next(sample)  # raises the corpus errors before training starts
    texts = itertools.chain([first], sample)
    return Tokenizer.train_bpe(texts, spec.vocab_size, show_progress=progress)


def _training_sample(spec: DataSpec, stream: CorpusStream) -> Iterator[str]:
    """Training-split texts in corpus order until ``spec.tokenizer_sample_chars`` characters
    (whole documents), read lazily: the trainer never holds more than its word counts."""
    seen = taken = chars = 0
    for doc in stream.documents():
        seen += 1
        if split_of(doc.id, spec.valid_fraction, spec.test_fraction) != "train":
            continue
        taken += 1
        yield doc.text
        chars += len(doc.text)
        if chars >= spec.tokenizer_sample_chars:
            return
    if seen == 0:
        raise no_documents_error(spec.corpus)
    if taken == 0:
        raise TsdfmError(f"corpus {spec.corpus!r} put no documents in the train split")


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
