"""Documents from a Hugging Face dataset: ``data.corpus: hf:NAME`` (optionally ``@SPLIT``).

Optional and online: it needs the ``datasets`` package and network access (or a warm
``datasets`` cache). Local files are the dependable route at scale; this one saves the export
step when a GPU node can reach the hub. Ids are ``NAME:index`` within the split read, so the
train/valid/test assignment (by id hash) is stable as long as the dataset's rows do not move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from tsdfm.artifacts import sha256_json
from tsdfm.data.documents import Document
from tsdfm.errors import TsdfmError

PREFIX = "hf:"
_FIX = "or export the text to local .jsonl/.parquet/.txt files and set data.corpus to their path"


def is_hf_corpus(corpus: str) -> bool:
    return corpus.startswith(PREFIX)


def parse(corpus: str) -> tuple[str, str]:
    """``hf:NAME@SPLIT`` -> (NAME, SPLIT); the split defaults to ``train``."""
    name, _, split = corpus[len(PREFIX) :].partition("@")
    if not name:
        raise TsdfmError(
            f"data.corpus={corpus!r} names no dataset; use e.g. hf:Skylion007/openwebtext"
        )
    return name, split or "train"


def load_hf_corpus(corpus: str) -> tuple[list[Document], dict[str, Any]]:
    docs, source = open_hf_corpus(corpus)
    return list(docs()), source


_ROWS_PER_READ = 1024  # rows taken from the (memory-mapped) dataset at a time


def open_hf_corpus(corpus: str) -> tuple[Callable[[], Iterator[Document]], dict[str, Any]]:
    """A function giving a fresh lazy pass over the documents, and the source record.

    The dataset itself is Arrow on disk, memory-mapped by ``datasets``; rows are read
    ``_ROWS_PER_READ`` at a time, so the text column is never materialised whole.
    """
    name, split = parse(corpus)
    try:
        import datasets
    except ImportError:
        raise TsdfmError(
            f"data.corpus={corpus!r} needs the `datasets` package (pip install datasets) and "
            f"network access; {_FIX}"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, unknown name, bad split: many exception types
        raise TsdfmError(
            f"cannot load the Hugging Face dataset {name!r} (split {split!r}): "
            f"{type(e).__name__}: {e}; check the name and the network, {_FIX}"
        ) from None
    if "text" not in ds.column_names:
        raise TsdfmError(
            f"the Hugging Face dataset {name!r} has no 'text' column (columns: "
            f"{ds.column_names}); {_FIX}"
        )

    def documents() -> Iterator[Document]:
        i = 0
        for batch in ds.iter(batch_size=_ROWS_PER_READ):
            for t in batch["text"]:
                if isinstance(t, str):
                    yield Document(id=f"{name}:{i}", text=t)
                i += 1

    fingerprint = getattr(ds, "_fingerprint", None)
    source = {
        "kind": "huggingface",
        "name": name,
        "split": split,
        "fingerprint": fingerprint,
        "rows": len(ds),
        "sha256": sha256_json([name, split, fingerprint, len(ds)]),
    }
    return documents, source
