"""Documents from local files: ``.txt`` (one document per file), ``.jsonl`` (one object per
line with ``"text"`` and optional ``"id"``), ``.parquet`` (column ``text``, optional ``id``),
or a directory holding any of these (searched recursively, in sorted order).

Ids default to ``f"{filename}:{index}"`` (filename relative to the directory given), so they
stay stable while files are not renamed; the split depends only on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tsdfm.artifacts import sha256_file, sha256_json
from tsdfm.data.documents import Document
from tsdfm.errors import TsdfmError

SUFFIXES = (".txt", ".jsonl", ".parquet")


def load_local(path: Path) -> tuple[list[Document], dict[str, Any]]:
    """All documents under `path` plus a source record whose sha256 covers every file."""
    files, names = _list_files(Path(path))
    docs: list[Document] = []
    for file, name in zip(files, names, strict=True):
        docs.extend(_READERS[file.suffix](file, name))
    return docs, local_source(path)


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


def _txt(file: Path, name: str) -> list[Document]:
    return [Document(id=f"{name}:0", text=_read_text(file))]


def _jsonl(file: Path, name: str) -> list[Document]:
    docs = []
    for index, line in enumerate(_read_text(file).splitlines()):
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
        docs.append(
            Document(id=str(doc_id) if doc_id is not None else f"{name}:{index}", text=text)
        )
    return docs


def _parquet(file: Path, name: str) -> list[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TsdfmError(
            f"reading {file} needs pyarrow: `pip install pyarrow` (or `pip install tsdfm[parquet]`)"
        ) from None
    try:
        table = pq.read_table(file)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise TsdfmError(f"cannot read parquet file {file} ({e})") from None
    if "text" not in table.column_names:
        raise TsdfmError(f'{file} has no "text" column (columns: {table.column_names})')
    texts = table.column("text").to_pylist()
    ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * len(texts)
    return [
        Document(id=str(i) if i is not None else f"{name}:{index}", text=t)
        for index, (i, t) in enumerate(zip(ids, texts, strict=True))
        if isinstance(t, str)
    ]


_READERS = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet}
