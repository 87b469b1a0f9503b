"""Streaming preparation: the same blocks as one in-memory pack, whatever the number of
processes or shards, and a resume after a kill that encodes only the unfinished shards."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_data_prepare import text_spec, write_jsonl

from tsdfm.artifacts import sha256_file
from tsdfm.data import DataSpec, Tokenizer, load_documents, prepare_data, split_of
from tsdfm.data.blocks import pack_documents
from tsdfm.data.spec import TOKENIZER_SAMPLE_CHARS
from tsdfm.errors import TsdfmError

SHARD = 1500  # characters per shard: a 300-document corpus makes ~15 shards


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", n=300, seed=3)


def prep(spec, out, tmp_path, **kw):
    kw.setdefault("shard_chars", SHARD)
    return prepare_data(spec, out, cache_dir=tmp_path / "cache", progress=False, **kw)


def files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / f"{name}.bin").read_bytes() for name in ("train", "valid", "test")}


def test_blocks_equal_one_pack_of_all_documents(corpus, tmp_path):
    """The streamed shards concatenate to exactly what packing every document at once gives:
    same split rule, same order, same EOS joins, same dropped tail, same checksums."""
    spec = text_spec(corpus)
    data = prep(spec, tmp_path / "d", tmp_path)
    assert data.manifest["shards"] > 5
    docs = load_documents(str(corpus), tmp_path / "cache")
    tok = data.tokenizer
    for name in ("train", "valid", "test"):
        texts = [d.text for d in docs if split_of(d.id, 0.1, 0.1) == name]
        expected = pack_documents(tok.encode_batch(texts), spec.seq_len, tok.eos_id)
        np.testing.assert_array_equal(data.split(name)[:], expected)
        entry = data.manifest["splits"][name]
        assert entry["documents"] == len(texts) and entry["blocks"] == len(expected)
        assert entry["sha256"] == sha256_file(tmp_path / "d" / f"{name}.bin")


def test_one_and_two_processes_and_any_shard_size_give_identical_bytes(corpus, tmp_path):
    spec = text_spec(corpus)
    one = prep(spec, tmp_path / "one", tmp_path, num_proc=1)
    two = prep(spec, tmp_path / "two", tmp_path, num_proc=2)
    big = prep(spec, tmp_path / "big", tmp_path, shard_chars=10**9)  # a single shard
    assert files(tmp_path / "one") == files(tmp_path / "two") == files(tmp_path / "big")
    assert one.manifest["splits"] == two.manifest["splits"] == big.manifest["splits"]
    assert one.tokenizer.fingerprint() == two.tokenizer.fingerprint()
    with pytest.raises(TsdfmError, match="num-proc"):
        prep(spec, tmp_path / "zero", tmp_path, num_proc=0)


_KILLED_RUN = """
    import os, signal, sys
    import tsdfm.data.shards as shards
    from tsdfm.data import DataSpec, prepare_data

    real, done = shards.encode_shard, []

    def encode_then_die(*args, **kwargs):
        mark = real(*args, **kwargs)
        done.append(mark)
        if len(done) == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind runs
        return mark

    shards.encode_shard = encode_then_die
    spec = DataSpec.from_dict({spec!r})
    prepare_data(spec, {out!r}, cache_dir={cache!r}, progress=False, shard_chars={shard})
"""


def test_resume_after_kill_encodes_only_unfinished_shards(corpus, tmp_path, monkeypatch):
    spec = text_spec(corpus)
    out = tmp_path / "d"
    script = _KILLED_RUN.format(
        spec=spec.to_dict(), out=str(out), cache=str(tmp_path / "cache"), shard=SHARD
    )
    env_path = str(Path(__file__).resolve().parents[1] / "src")
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == -9, run.stderr
    work = tmp_path / ".d.partial"
    assert not out.exists()
    assert len(list((work / "shards").glob("*.json"))) == 4

    import tsdfm.data.shards as shards

    encoded = []
    real = shards.encode_shard

    def counting(work, index, *args, **kwargs):
        encoded.append(index)
        return real(work, index, *args, **kwargs)

    monkeypatch.setattr(shards, "encode_shard", counting)
    data = prep(spec, out, tmp_path)
    n = data.manifest["shards"]
    assert encoded == list(range(4, n))  # the four finished shards were not encoded again
    monkeypatch.undo()
    fresh = prep(spec, tmp_path / "fresh", tmp_path)
    assert files(out) == files(tmp_path / "fresh")
    assert data.manifest["splits"] == fresh.manifest["splits"]
    assert not work.exists()


def test_a_stale_work_directory_of_another_spec_is_started_over(corpus, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tsdfm.data.prepare.assemble_split", boom)
    with pytest.raises(KeyboardInterrupt):
        prep(text_spec(corpus, seq_len=8), tmp_path / "d", tmp_path)
    monkeypatch.undo()
    data = prep(text_spec(corpus), tmp_path / "d", tmp_path)
    prep(text_spec(corpus), tmp_path / "fresh", tmp_path)
    assert data.seq_len == 16 and files(tmp_path / "d") == files(tmp_path / "fresh")


def test_tokenizer_is_trained_on_a_bounded_sample(corpus, tmp_path):
    spec = text_spec(corpus, tokenizer_sample_chars=3000)
    assert spec.determining()["tokenizer_sample_chars"] == 3000
    assert "tokenizer_sample_chars" not in text_spec(corpus).determining()
    assert TOKENIZER_SAMPLE_CHARS == DataSpec().tokenizer_sample_chars
    data = prep(spec, tmp_path / "d", tmp_path)
    docs = load_documents(str(corpus), tmp_path / "cache")
    sample, chars = [], 0
    for d in docs:
        if split_of(d.id, 0.1, 0.1) == "train" and chars < 3000:
            sample.append(d.text)
            chars += len(d.text)
    assert len(sample) < len(docs) * 0.5  # a real bound, not the whole split
    expected = Tokenizer.train_bpe(sample, spec.vocab_size)
    assert data.tokenizer.fingerprint() == expected.fingerprint()
    with pytest.raises(TsdfmError, match="tokenizer_sample_chars"):
        text_spec(corpus, tokenizer_sample_chars=0).validate()


def test_manifest_records_shards_and_no_work_files_remain(corpus, tmp_path):
    out = tmp_path / "d"
    prep(text_spec(corpus), out, tmp_path)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json", "test.bin", "tokenizer", "train.bin", "valid.bin"]
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
