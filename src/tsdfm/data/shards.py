"""Streaming, sharded, resumable tokenisation of a text corpus into packed token blocks.

One pass over the corpus after the tokenizer exists:

1. documents, in corpus order, are grouped into *shards* of consecutive documents (a shard
   closes once it holds ``shard_chars`` characters);
2. each shard is encoded, in this process or in one of ``num_proc`` worker processes, into
   ``shards/NNNNNN.bin``: for each split in turn (train, valid, test) the stream
   ``doc EOS doc EOS ...`` of its documents (split by :func:`split_of`, the hash rule), then
   ``shards/NNNNNN.json`` (token and document counts per split) is written as its done mark;
3. each split file is the concatenation of its streams in shard order, cut to the first
   ``floor(T / L) * L`` tokens: exactly the single stream :func:`pack_documents` packs.

Why the result does not depend on ``num_proc``: a shard's bytes depend only on its documents
and the tokenizer, and the final files concatenate the shards in shard order, whoever encoded
them. Why memory is bounded: at most ``2 * num_proc`` shards of text are in flight, a worker
holds one shard and one batch of encodings, and assembly copies ``_COPY_TOKENS`` at a time;
nothing grows with the corpus. Disk: the shards and the split files, ~2x the token bytes,
until the shards are removed at the end.

Resume: every shard file is written atomically and counts only with its JSON mark, so after a
kill a rerun re-reads the corpus (cheap next to encoding), skips the marked shards and
encodes the rest; once ``shards/done.json`` exists not even the reading is repeated.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tsdfm.artifacts import atomic_open, atomic_write_json
from tsdfm.data.corpora import split_of
from tsdfm.data.documents import Document
from tsdfm.data.prepared import SPLITS
from tsdfm.data.tokenizer import Tokenizer
from tsdfm.errors import TsdfmError

SHARD_CHARS = 8_000_000  # characters of text per shard: ~8 MB, a few seconds of encoding
SHARDS = "shards"
DONE = "done.json"
_ENCODE_BATCH = 256  # documents per encode_batch call inside a shard
_COPY_TOKENS = 1 << 22  # tokens copied at a time when assembling the split files
_PARALLELISM = "TOKENIZERS_PARALLELISM"


@dataclass(frozen=True)
class ShardPlan:
    """How documents become shards; the output depends on the split fractions, the
    tokenizer and the dtype only (``shard_chars`` moves shard boundaries, not bytes)."""

    valid_fraction: float
    test_fraction: float
    dtype: str
    eos_id: int
    shard_chars: int = SHARD_CHARS


def shard_groups(docs: Iterator[Document], plan: ShardPlan) -> Iterator[list[list[str]]]:
    """Consecutive documents grouped into shards, each as its texts per split (SPLITS order)."""
    parts: list[list[str]] = [[] for _ in SPLITS]
    chars = 0
    for doc in docs:
        name = split_of(doc.id, plan.valid_fraction, plan.test_fraction)
        parts[SPLITS.index(name)].append(doc.text)
        chars += len(doc.text)
        if chars >= plan.shard_chars:
            yield parts
            parts, chars = [[] for _ in SPLITS], 0
    if chars:
        yield parts


def _paths(work: Path, index: int) -> tuple[Path, Path]:
    stem = work / SHARDS / f"{index:06d}"
    return stem.with_suffix(".bin"), stem.with_suffix(".json")


def shard_done(work: Path, index: int) -> bool:
    return _paths(work, index)[1].is_file()


def _stream(ids: list[list[int]], eos_id: int, dtype: np.dtype) -> np.ndarray:
    """``ids[0] EOS ids[1] EOS ...`` as one array, filled slice by slice (C-level copies)."""
    out = np.empty(sum(len(x) for x in ids) + len(ids), dtype=dtype)
    pos = 0
    for x in ids:
        out[pos : pos + len(x)] = x
        pos += len(x)
        out[pos] = eos_id
        pos += 1
    return out


def encode_shard(
    work: Path, index: int, parts: list[list[str]], tokenizer: Tokenizer, plan: ShardPlan
) -> dict[str, Any]:
    """Write shard `index` (its .bin atomically, then its .json mark) and return the mark."""
    bin_path, mark_path = _paths(work, index)
    dtype = np.dtype(plan.dtype)
    splits = {}
    with atomic_open(bin_path) as f:
        for name, texts in zip(SPLITS, parts, strict=True):
            tokens = 0
            for start in range(0, len(texts), _ENCODE_BATCH):
                ids = tokenizer.encode_batch(texts[start : start + _ENCODE_BATCH])
                stream = _stream(ids, plan.eos_id, dtype)
                stream.tofile(f)
                tokens += stream.size
            splits[name] = {"documents": len(texts), "tokens": tokens}
    mark = {"index": index, "chars": sum(len(t) for p in parts for t in p), "splits": splits}
    atomic_write_json(mark_path, mark)
    return mark


# ---------------------------------------------------------------------- worker processes
_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    """One tokenizer per worker, single-threaded: the processes are the parallelism."""
    global _worker_tokenizer
    os.environ[_PARALLELISM] = "false"
    _worker_tokenizer = Tokenizer.load(Path(tokenizer_dir))


def _encode_in_worker(
    work: str, index: int, parts: list[list[str]], plan: ShardPlan
) -> dict[str, Any]:
    assert _worker_tokenizer is not None
    return encode_shard(Path(work), index, parts, _worker_tokenizer, plan)


def encode_corpus(
    docs: Iterator[Document],
    work: Path,
    tokenizer_dir: Path,
    plan: ShardPlan,
    num_proc: int = 1,
    progress: bool = False,
) -> int:
    """Encode every not yet marked shard of `docs` into ``work/shards``; returns the number
    of shards. ``num_proc`` 1 encodes here on one thread, N > 1 in N spawned processes."""
    done_path = work / SHARDS / DONE
    if done_path.is_file():
        return int(json.loads(done_path.read_text(encoding="utf-8"))["shards"])
    (work / SHARDS).mkdir(parents=True, exist_ok=True)
    bar = tqdm(desc="encoding", unit="MB", unit_scale=True, disable=not progress)
    groups = enumerate(shard_groups(docs, plan))
    try:
        if num_proc == 1:
            n = _encode_here(groups, work, tokenizer_dir, plan, bar)
        else:
            n = _encode_in_pool(groups, work, tokenizer_dir, plan, num_proc, bar)
    finally:
        bar.close()
    atomic_write_json(done_path, {"shards": n})
    return n


def _encode_here(groups, work: Path, tokenizer_dir: Path, plan: ShardPlan, bar: tqdm) -> int:
    tokenizer = Tokenizer.load(tokenizer_dir)
    previous = os.environ.get(_PARALLELISM)
    os.environ[_PARALLELISM] = "false"  # one process means one core
    try:
        n = 0
        for index, parts in groups:
            n = index + 1
            if not shard_done(work, index):
                bar.update(encode_shard(work, index, parts, tokenizer, plan)["chars"] / 1e6)
        return n
    finally:
        if previous is None:
            os.environ.pop(_PARALLELISM, None)
        else:
            os.environ[_PARALLELISM] = previous


def _encode_in_pool(
    groups, work: Path, tokenizer_dir: Path, plan: ShardPlan, num_proc: int, bar: tqdm
) -> int:
    pool = ProcessPoolExecutor(
        num_proc,
        mp_context=get_context("spawn"),  # no fork of a process holding threads or torch
        initializer=_init_worker,
        initargs=(str(tokenizer_dir),),
    )
    pending: set[Future] = set()

    def collect() -> None:
        nonlocal pending
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in finished:
            bar.update(fut.result()["chars"] / 1e6)

    try:
        n = 0
        for index, parts in groups:
            n = index + 1
            if shard_done(work, index):
                continue
            pending.add(pool.submit(_encode_in_worker, str(work), index, parts, plan))
            if len(pending) >= 2 * num_proc:  # bound the text in flight
                collect()
        while pending:
            collect()
        return n
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------- assembly
def shard_marks(work: Path, n: int) -> list[dict[str, Any]]:
    marks = []
    for index in range(n):
        path = _paths(work, index)[1]
        try:
            marks.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise TsdfmError(
                f"{path} is missing or unreadable ({e}); delete {work} and run prepare again"
            ) from None
    return marks


def split_totals(marks: list[dict[str, Any]], name: str) -> tuple[int, int]:
    """(documents, tokens incl. EOS) of split `name` over all shards."""
    docs = sum(m["splits"][name]["documents"] for m in marks)
    return docs, sum(m["splits"][name]["tokens"] for m in marks)


def assemble_split(
    work: Path, marks: list[dict[str, Any]], name: str, seq_len: int, dtype: str
) -> dict[str, Any]:
    """Write ``work/<name>.bin`` from the shards (atomically, hashing as it goes)."""
    dt = np.dtype(dtype)
    documents, total = split_totals(marks, name)
    keep = total // seq_len * seq_len
    path = work / f"{name}.bin"
    digest = hashlib.sha256()
    left = keep
    with atomic_open(path) as f:
        for index, mark in enumerate(marks):
            offset = sum(mark["splits"][s]["tokens"] for s in SPLITS[: SPLITS.index(name)])
            count = min(mark["splits"][name]["tokens"], left)
            if count == 0:
                continue
            src = np.memmap(_paths(work, index)[0], dtype=dt, mode="r")
            for start in range(offset, offset + count, _COPY_TOKENS):
                chunk = src[start : min(start + _COPY_TOKENS, offset + count)].tobytes()
                digest.update(chunk)
                f.write(chunk)
            del src
            left -= count
            if left == 0:
                break
    return {
        "file": path.name,
        "documents": documents,
        "blocks": keep // seq_len,
        "tokens": keep,
        "tokens_dropped": total - keep,
        "sha256": digest.hexdigest(),
    }
