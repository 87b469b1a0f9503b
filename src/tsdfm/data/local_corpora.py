"""Documents from local files: ``.txt`` (one document per file), ``.jsonl`` (one object per
line with ``"text"`` and optional ``"id"``), ``.parquet`` (column ``text``, optional ``id``),
or a directory holding any of these (searched recursively, in sorted order).

Ids default to ``f"{filename}:{index}"`` (filename relative to the directory given), so they
stay stable while files are not renamed; the split depends only on them.

Reading is lazy (:func:`iter_local`): one line of a ``.jsonl``, one record batch of a
``.parquet`` file, one ``.txt`` file at a time, so a corpus larger than memory can be
streamed through the data stage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tsdfm.artifacts import sha256_file, sha256_json
from tsdfm.data.documents import Document
from tsdfm.errors import TsdfmError

SUFFIXES = (".txt", ".jsonl", ".parquet")


def iter_local(path: Path) -> Iterator[Document]:
    """The documents under `path`, read lazily in file order (sorted) and file position."""
    files, names = _list_files(Path(path))
    for file, name in zip(files, names, strict=True):
        yield from _READERS[file.suffix](file, name)


def local_source(path: Path) -> dict[str, Any]:
    """Where local data came from: sha256 over the (name, file sha256) list, so renaming,
    adding or editing any file changes it."""
    path = Path(path)
    files, names = _list_files(path)
    hashes = [[name, sha256_file(file)] for file, name in zip(files, names, strict=True)]
    return {
        "kind": "local",
        "path": str(path.resolve()),
        "files": len(files),
        "sha256": sha256_json(hashes),
    }


def _list_files(path: Path) -> tuple[list[Path], list[str]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise TsdfmError(f"directory {path} holds no {'/'.join(SUFFIXES)} files")
        return files, [p.relative_to(path).as_posix() for p in files]
    if path.suffix in SUFFIXES:
        return [path], [path.name]
    raise TsdfmError(
        f"cannot read {path}: local corpora must be {', '.join(SUFFIXES)} files or a "
        "directory of them"
    )


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TsdfmError(f"{file} is not valid UTF-8 ({e}); convert it to UTF-8") from None


def _txt(file: Path, name: str) -> Iterator[Document]:
    yield Document(id=f"{name}:0", text=_read_text(file))


def _jsonl_lines(file: Path) -> Iterator[str]:
    try:
        with open(file, encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise TsdfmError(f"{file} is not valid UTF-8 ({e}); convert it to UTF-8") from None


def _jsonl(file: Path, name: str) -> Iterator[Document]:
    for index, line in enumerate(_jsonl_lines(file)):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            text = obj["text"]
        except (ValueError, KeyError, TypeError):
            raise TsdfmError(
                f'{file}:{index + 1} must be a JSON object with a "text" field'
            ) from None
        if not isinstance(text, str):
            raise TsdfmError(f'{file}:{index + 1}: "text" must be a string')
        doc_id = obj.get("id")
        yield Document(id=str(doc_id) if doc_id is not None else f"{name}:{index}", text=text)


_PARQUET_BATCH = 4096  # rows per record batch: bounded memory whatever the file size


def _parquet(file: Path, name: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TsdfmError(
            f"reading {file} needs pyarrow: `pip install pyarrow` (or `pip install tsdfm[parquet]`)"
        ) from None
    try:
        pf = pq.ParquetFile(file)
        columns = pf.schema_arrow.names
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise TsdfmError(f"cannot read parquet file {file} ({e})") from None
    if "text" not in columns:
        raise TsdfmError(f'{file} has no "text" column (columns: {columns})')
    wanted = ["text", "id"] if "id" in columns else ["text"]
    index = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=wanted):
            texts = batch.column("text").to_pylist()
            ids = batch.column("id").to_pylist() if "id" in wanted else [None] * len(texts)
            for i, t in zip(ids, texts, strict=True):
                if isinstance(t, str):
                    yield Document(id=str(i) if i is not None else f"{name}:{index}", text=t)
                index += 1
    except Exception as e:
        if isinstance(e, TsdfmError):
            raise
        raise TsdfmError(f"cannot read parquet file {file} ({e})") from None


_READERS = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet}
