"""Tokenizer id layout ([MASK] last), round trips, and save/load stability."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tsdfm.data import Tokenizer
from tsdfm.errors import TsdfmError

WORDS = "the a cat dog bird sat ran on under mat tree quickly slowly red blue big small".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe(sentences(300), vocab_size=300)


def test_bpe_layout(bpe):
    assert bpe.kind == "bpe"
    n = bpe.n_real
    assert 256 < n <= 300
    assert (bpe.eos_id, bpe.pad_id, bpe.mask_id) == (n, n + 1, n + 2)
    assert bpe.mask_id == bpe.vocab_size - 1 == bpe.num_classes
    assert bpe.special_ids == {n, n + 1, n + 2}


def test_bpe_round_trip(bpe):
    texts = sentences(20, seed=1) + ["unseen wörds, ünïcode ✓ and [MASK] as text  \n"]
    for text in texts:
        ids = bpe.encode(text)
        assert max(ids) < bpe.n_real  # literal "[MASK]" in text is not the special id
        assert bpe.decode(ids) == text
    assert bpe.decode_batch(bpe.encode_batch(texts)) == texts


def test_bpe_compresses(bpe):
    text = sentences(1, seed=2)[0]
    assert len(bpe.encode(text)) < len(text.encode("utf-8"))


def test_decode_skips_specials(bpe):
    ids = bpe.encode("the cat")
    with_specials = ids + [bpe.eos_id, bpe.mask_id, bpe.pad_id]
    assert bpe.decode(with_specials) == "the cat"
    assert bpe.decode(np.array(with_specials)) == "the cat"
    assert bpe.decode(torch.tensor(with_specials)) == "the cat"
    assert "[MASK]" in bpe.decode(with_specials, skip_special=False)
    assert bpe.decode_batch(torch.tensor([with_specials, with_specials])) == ["the cat"] * 2


def test_decode_rejects_out_of_range(bpe):
    with pytest.raises(TsdfmError, match="outside"):
        bpe.decode([0, bpe.vocab_size])


def test_training_is_deterministic(bpe):
    again = Tokenizer.train_bpe(sentences(300), vocab_size=300)
    assert again.fingerprint() == bpe.fingerprint()
    other = Tokenizer.train_bpe(sentences(300, seed=9), vocab_size=280)
    assert other.fingerprint() != bpe.fingerprint()


def test_small_vocab_rejected():
    with pytest.raises(TsdfmError, match="256"):
        Tokenizer.train_bpe(["abc"], vocab_size=100)


def test_save_load(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    meta = json.loads((tmp_path / "tok" / "tokenizer_meta.json").read_text())
    assert meta["mask_id"] == bpe.mask_id and meta["kind"] == "bpe"
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.fingerprint() == bpe.fingerprint()
    text = "the [MASK] sat on a tree."
    assert loaded.encode(text) == bpe.encode(text)
    assert loaded.mask_id == bpe.mask_id


def test_load_errors(bpe, tmp_path):
    with pytest.raises(TsdfmError, match="tokenizer_meta.json"):
        Tokenizer.load(tmp_path / "missing")
    bpe.save(tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").write_text("{not json")
    with pytest.raises(TsdfmError, match="tokenizer.json"):
        Tokenizer.load(tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer_meta.json").write_text("[]")
    with pytest.raises(TsdfmError, match="corrupt"):
        Tokenizer.load(tmp_path / "tok")


def test_identity(tmp_path):
    tok = Tokenizer.identity(16)
    assert (tok.vocab_size, tok.num_classes, tok.mask_id) == (17, 16, 16)
    assert tok.eos_id is None and tok.pad_id is None and tok.special_ids == {16}
    assert tok.encode("3 0 15") == [3, 0, 15]
    assert tok.decode([3, 16, 0, 15]) == "3 0 15"
    assert tok.decode([3, 16], skip_special=False) == "3 [MASK]"
    assert tok.encode("3 [MASK]") == [3, 16]
    with pytest.raises(TsdfmError):
        tok.encode("3 16")
    tok.save(tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()
    loaded = Tokenizer.load(tmp_path)
    assert loaded.fingerprint() == tok.fingerprint() != Tokenizer.identity(15).fingerprint()
