"""Samples files on disk: plain ``.jsonl``, gzip-compressed ``.jsonl.gz``, and ids-only records.

A samples file holds one JSON object per line (``index``, ``text``, ``ids``) beside a
``<name>.meta.json`` provenance sidecar. Committed evidence is stored compactly, and every reader
goes through :func:`iter_records`, so the three forms read the same:

- ``<name>.jsonl.gz``: the same lines, gzip-compressed (text compresses about 4x, ids 8x);
- ids-only records (no ``text``): for corpora whose tokenizer is the identity (``markov``) a
  text is the ids written in decimal and joined by spaces, exactly what
  :meth:`tsdfm.data.tokenizer.Tokenizer.decode` returns there, so storing it twice is waste.
  :func:`record_text` rebuilds it.

A path naming ``<name>.jsonl`` that only exists compressed resolves to ``<name>.jsonl.gz``
(:func:`resolve_samples`), so commands and reports written before a folder was compacted keep
working.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tsdfm.artifacts import atomic_write_bytes
from tsdfm.errors import TsdfmError

SUFFIXES = (".jsonl.gz", ".jsonl")


def samples_stem(path: str | Path) -> str:
    """``teacher_8`` for ``teacher_8.jsonl`` and ``teacher_8.jsonl.gz``."""
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_samples_file(path: str | Path) -> bool:
    return Path(path).name.endswith(SUFFIXES)


def meta_path(samples_path: str | Path) -> Path:
    """The provenance sidecar: ``<name>.meta.json`` for either storage form."""
    samples_path = Path(samples_path)
    return samples_path.with_name(samples_stem(samples_path) + ".meta.json")


def resolve_samples(path: str | Path) -> Path:
    """``path`` itself, or its ``.jsonl.gz`` twin when only the compressed file exists."""
    path = Path(path)
    if not path.is_file() and path.name.endswith(".jsonl"):
        gz = path.with_name(path.name + ".gz")
        if gz.is_file():
            return gz
    return path


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 (closed by the caller's ``with``)


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-empty line; errors name the file and line."""
    path = resolve_samples(path)
    if not path.is_file():
        raise TsdfmError(f"samples file not found: {path}")
    try:
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TsdfmError(f"{path}:{n} is not a JSON sample record ({e})") from e
                if not isinstance(obj, dict):
                    raise TsdfmError(f"{path}:{n} is not a sample record (an object with 'ids')")
                yield n, obj
    except UnicodeDecodeError as e:
        raise TsdfmError(
            f"{path} is not a samples file (not UTF-8 text: byte {e.start}); pass the "
            "samples.jsonl written by `tsdfm sample`"
        ) from None
    except (OSError, EOFError) as e:  # truncated or corrupt gzip
        raise TsdfmError(f"{path} cannot be read ({e}); restore it from git") from e


def record_text(obj: dict[str, Any]) -> str:
    """The record's text, or the identity decoding of its ids for an ids-only record."""
    if "text" in obj:
        return obj["text"]
    return " ".join(str(i) for i in obj["ids"])


def first_texts(path: str | Path, n: int) -> list[str]:
    """The texts of the first ``n`` records (what a report shows), reading no further."""
    records = iter_records(path)
    try:
        return [record_text(obj) for _, (_, obj) in zip(range(n), records, strict=False)]
    finally:
        records.close()


def encode_records(ids: list[list[int]], texts: list[str] | None) -> bytes:
    """JSON lines; ``texts=None`` writes ids-only records (see :func:`record_text`)."""
    lines = []
    for i, row in enumerate(ids):
        obj: dict[str, Any] = {"index": i}
        if texts is not None:
            obj["text"] = texts[i]
        obj["ids"] = row
        lines.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode("utf-8")


def texts_are_ids(ids: list[list[int]], texts: list[str]) -> bool:
    """True when every text is its ids joined by spaces (an identity tokenizer's output)."""
    return all(t == " ".join(str(i) for i in row) for row, t in zip(ids, texts, strict=True))


def write_compact(path: str | Path, ids: list[list[int]], texts: list[str]) -> Path:
    """``<name>.jsonl.gz`` (deterministic bytes: no timestamp), ids-only when texts are ids."""
    path = Path(path)
    out = path.with_name(samples_stem(path) + ".jsonl.gz")
    payload = encode_records(ids, None if texts_are_ids(ids, texts) else texts)
    atomic_write_bytes(out, gzip.compress(payload, compresslevel=9, mtime=0))
    return out
