"""The data stage end to end on tiny local corpora and a tiny markov chain."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest

from tsdfm.data import DataSpec, MarkovSpec, load_prepared, prepare_data, split_of
from tsdfm.errors import TsdfmError

WORDS = "the a cat dog bird sat ran on under mat tree quickly slowly red blue big small".split()


def write_jsonl(path, n=200, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + "."
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return path


def text_spec(corpus, **kw) -> DataSpec:
    base = dict(seq_len=16, vocab_size=300, valid_fraction=0.1, test_fraction=0.1)
    return DataSpec(corpus=str(corpus), **{**base, **kw})


@pytest.fixture
def jsonl(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl")


def prep(spec, out, tmp_path):
    return prepare_data(spec, out, cache_dir=tmp_path / "cache", progress=False)


def test_prepare_jsonl(jsonl, tmp_path):
    out = tmp_path / "data"
    data = prep(text_spec(jsonl), out, tmp_path)
    for name in ("train.bin", "valid.bin", "test.bin", "manifest.json", "tokenizer"):
        assert (out / name).exists()
    assert not list(tmp_path.glob(".data.partial-*"))
    m = data.manifest
    assert m["complete"] is True and m["dtype"] == "uint16" and m["seq_len"] == 16
    assert m["source"]["kind"] == "local" and len(m["source"]["sha256"]) == 64
    assert m["tokenizer"]["fingerprint"] == data.tokenizer.fingerprint()
    assert sum(s["documents"] for s in m["splits"].values()) == 200
    assert m["splits"]["train"]["documents"] > m["splits"]["valid"]["documents"] > 0
    train = data.split("train")
    assert len(train) == m["splits"]["train"]["blocks"] > 0
    assert train[0].shape == (16,) and data.seq_len == 16
    ids = train[:]
    assert ids.max() < data.tokenizer.mask_id
    assert (ids == data.tokenizer.eos_id).any()
    assert data.chain() is None
    docs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    first = next(d["text"] for d in docs if split_of(d["id"], 0.1, 0.1) == "train")
    head = data.tokenizer.decode(train[0], skip_special=False).split("[EOS]")[0]
    assert head and first.startswith(head)  # blocks follow the documents in order

    again = load_prepared(out, verify=True)
    assert again.manifest == m and again.spec == data.spec


def test_second_call_is_noop(jsonl, tmp_path, caplog):
    out = tmp_path / "data"
    prep(text_spec(jsonl), out, tmp_path)
    mtime = (out / "train.bin").stat().st_mtime_ns
    manifest = (out / "manifest.json").read_text()
    with caplog.at_level("INFO", logger="tsdfm.data.prepare"):
        prep(text_spec(jsonl), out, tmp_path)
    assert "up to date" in caplog.text
    assert (out / "train.bin").stat().st_mtime_ns == mtime
    assert (out / "manifest.json").read_text() == manifest
    # a field that does not shape text data (the markov settings) does not count
    prep(replace(text_spec(jsonl), markov=MarkovSpec(vocab_size=8)), out, tmp_path)


def test_different_spec_or_source_raises(jsonl, tmp_path):
    out = tmp_path / "data"
    prep(text_spec(jsonl), out, tmp_path)
    with pytest.raises(TsdfmError, match="different spec.*seq_len"):
        prep(text_spec(jsonl, seq_len=8), out, tmp_path)
    write_jsonl(jsonl, seed=1)
    with pytest.raises(TsdfmError, match="different version"):
        prep(text_spec(jsonl), out, tmp_path)


def test_txt_directory(tmp_path):
    corpus = tmp_path / "texts"
    corpus.mkdir()
    rng = random.Random(0)
    for i in range(60):
        (corpus / f"f{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(40)))
    data = prep(text_spec(corpus, valid_fraction=0.2, test_fraction=0.2), tmp_path / "d", tmp_path)
    assert sum(s["documents"] for s in data.manifest["splits"].values()) == 60


def test_empty_and_tiny_corpora(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": " "}) + "\n")
    with pytest.raises(TsdfmError, match="no non-empty"):
        prep(text_spec(empty), tmp_path / "d", tmp_path)
    tiny = write_jsonl(tmp_path / "tiny.jsonl", n=3)
    with pytest.raises(TsdfmError, match="split"):
        prep(text_spec(tiny), tmp_path / "d2", tmp_path)
    assert not (tmp_path / "d").exists() and not (tmp_path / "d2").exists()
    assert not list(tmp_path.glob(".d*.partial-*"))


def test_interrupted_prepare_leaves_no_data_and_resumes(jsonl, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tsdfm.data.prepare.assemble_split", boom)
    with pytest.raises(KeyboardInterrupt):
        prep(text_spec(jsonl), tmp_path / "d", tmp_path)
    # no data where it would be mistaken for complete; the work directory stays to resume
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.partial", "corpus.jsonl"]
    monkeypatch.undo()
    data = prep(text_spec(jsonl), tmp_path / "d", tmp_path)
    fresh = prep(text_spec(jsonl), tmp_path / "fresh", tmp_path)
    assert data.manifest["splits"] == fresh.manifest["splits"]
    assert not (tmp_path / ".d.partial").exists()


def test_refuses_foreign_directory(jsonl, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(TsdfmError, match="delete it or choose another"):
        prep(text_spec(jsonl), tmp_path / "d", tmp_path)
    (tmp_path / "e").mkdir()  # an empty directory is fine
    prep(text_spec(jsonl), tmp_path / "e", tmp_path)


def test_load_prepared_errors(jsonl, tmp_path):
    with pytest.raises(TsdfmError, match="tsdfm data prepare"):
        load_prepared(tmp_path / "nothing")
    out = tmp_path / "d"
    prep(text_spec(jsonl), out, tmp_path)
    blob = bytearray((out / "valid.bin").read_bytes())
    blob[0] ^= 1
    (out / "valid.bin").write_bytes(bytes(blob))
    load_prepared(out)  # no verification by default
    with pytest.raises(TsdfmError, match="valid"):
        load_prepared(out, verify=True)


def test_validate():
    with pytest.raises(TsdfmError, match="seq_len"):
        DataSpec(seq_len=1).validate()
    with pytest.raises(TsdfmError, match="vocab_size"):
        DataSpec(vocab_size=100).validate()
    with pytest.raises(TsdfmError, match="fraction"):
        DataSpec(valid_fraction=0.6, test_fraction=0.5).validate()
    with pytest.raises(TsdfmError, match="order"):
        DataSpec(corpus="markov", seq_len=2, markov=MarkovSpec(order=2)).validate()
    DataSpec(corpus="markov", vocab_size=1).validate()  # vocab_size is a BPE setting
    assert DataSpec.from_dict(DataSpec().to_dict()) == DataSpec()
    with pytest.raises(TsdfmError, match="unknown"):
        DataSpec.from_dict({"corpus": "x", "seqlen": 3})


def test_prepare_markov(tmp_path):
    m = MarkovSpec(vocab_size=8, order=1, alpha=0.1, num_train=500, num_valid=64, num_test=128)
    spec = DataSpec(corpus="markov", seq_len=32, markov=m)
    data = prep(spec, tmp_path / "mk", tmp_path)
    counts = {k: v["blocks"] for k, v in data.manifest["splits"].items()}
    assert counts == {"train": 500, "valid": 64, "test": 128}
    tok = data.tokenizer
    assert (tok.kind, tok.vocab_size, tok.mask_id, tok.num_classes) == ("identity", 9, 8, 8)
    chain = data.chain()
    assert chain.to_dict() == {"vocab_size": 8, "order": 1, "alpha": 0.1, "eps": 0.01, "seed": 0}
    train, valid = data.split("train")[:], data.split("valid")[:]
    assert train.shape == (500, 32) and train.max() < 8
    assert not np.array_equal(train[:64], valid)
    nll = chain.nll_per_token(train)
    assert abs(nll.mean() - chain.expected_nll_per_token(32)) < 5 * nll.std() / np.sqrt(500)
    assert data.manifest["markov"]["entropy_rate"] == pytest.approx(chain.entropy_rate())
    mtime = (tmp_path / "mk" / "train.bin").stat().st_mtime_ns
    prep(spec, tmp_path / "mk", tmp_path)
    assert (tmp_path / "mk" / "train.bin").stat().st_mtime_ns == mtime
    with pytest.raises(TsdfmError, match=r"markov\.alpha"):
        prep(replace(spec, markov=replace(m, alpha=0.2)), tmp_path / "mk", tmp_path)
