"""The unit every corpus reduces to, and its on-disk cache format (JSON lines)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tsdfm.artifacts import atomic_write_bytes
from tsdfm.errors import TsdfmError


@dataclass(frozen=True)
class Document:
    """One document: a stable id (it decides the split) and its text."""

    id: str
    text: str


def documents_to_jsonl(docs: Iterable[Document]) -> bytes:
    lines = (json.dumps({"id": d.id, "text": d.text}, ensure_ascii=False) for d in docs)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def write_documents_jsonl(path: Path, docs: Iterable[Document]) -> None:
    """Write atomically, so an interrupted run never leaves a truncated cache behind."""
    atomic_write_bytes(path, documents_to_jsonl(docs))


def read_documents_jsonl(path: Path) -> list[Document]:
    """Read a cache written by :func:`write_documents_jsonl`."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
                docs.append(Document(id=str(obj["id"]), text=obj["text"]))
            except (ValueError, KeyError, TypeError) as e:
                raise TsdfmError(
                    f"{path}:{lineno} is not a valid cached document ({e}); delete {path}"
                ) from None
    return docs
