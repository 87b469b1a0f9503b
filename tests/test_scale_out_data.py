"""The scale-out configuration: an existing tokenizer (GPT-2's, here a stand-in built offline),
Hugging Face dataset names, and the 170M configs themselves."""

from __future__ import annotations

import json
import random
import sys
import types

import pytest
import torch

from tsdfm.config import load_config
from tsdfm.data import DataSpec, Tokenizer, load_prepared, prepare_data
from tsdfm.errors import TsdfmError

WORDS = "the a cat dog bird sat ran on under mat tree quickly slowly red blue big small".split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def gpt2_like(tmp_path_factory):
    """A byte-level BPE saved the way GPT-2's tokenizer.json is: an <|endoftext|> that is part
    of the vocabulary and also registered as a special token."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HF(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts(300), trainer)
    root = tmp_path_factory.mktemp("gpt2")
    hf.save(str(root / "tokenizer.json"))
    (root / "bpe").mkdir()
    hf.model.save(str(root / "bpe"))  # vocab.json + merges.txt, the older GPT-2 layout
    return root, hf


def test_existing_tokenizer_keeps_its_ids(gpt2_like):
    root, hf = gpt2_like
    for source in (root, root / "tokenizer.json", root / "bpe"):
        tok = Tokenizer.from_existing(source)
        n = hf.get_vocab_size(with_added_tokens=False)
        assert (tok.n_real, tok.eos_id, tok.mask_id) == (n, n, n + 2)
        text = "the cat sat under a big red tree."
        assert tok.encode(text) == hf.encode(text).ids
        assert tok.decode(tok.encode(text)) == text


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TsdfmError, match="holds no tokenizer.json.*data.tokenizer_path"):
        Tokenizer.from_existing(tmp_path / "empty")
    with pytest.raises(TsdfmError, match="does not exist"):
        Tokenizer.from_existing(tmp_path / "nowhere" / "gpt2")


def test_prepare_with_tokenizer_path(gpt2_like, tmp_path):
    root, hf = gpt2_like
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(200, seed=1)))
    spec = DataSpec(
        corpus=str(corpus),
        seq_len=16,
        valid_fraction=0.1,
        test_fraction=0.1,
        tokenizer_path=str(root),
        vocab_size=50257,  # ignored: the tokenizer decides
    )
    data = prepare_data(spec, tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    assert data.tokenizer.n_real == hf.get_vocab_size(with_added_tokens=False)
    assert load_prepared(tmp_path / "data").tokenizer.fingerprint() == data.tokenizer.fingerprint()
    assert spec.determining()["tokenizer_path"] == str(root)
    # a spec without the option compares as before (older manifests stay valid)
    assert "tokenizer_path" not in DataSpec(corpus=str(corpus)).determining()


def test_tokenizer_path_is_for_text_only():
    with pytest.raises(TsdfmError, match="markov corpus has its own"):
        DataSpec(corpus="markov", tokenizer_path="data/gpt2").validate()


def test_hf_corpus_without_datasets_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    spec = DataSpec(corpus="hf:Skylion007/openwebtext", seq_len=16, vocab_size=300)
    with pytest.raises(TsdfmError, match="needs the `datasets` package.*local"):
        prepare_data(spec, tmp_path / "d", cache_dir=tmp_path / "c", progress=False)


def test_hf_corpus_reads_the_text_column(tmp_path, monkeypatch):
    calls = []

    class FakeDataset:  # the part of datasets.Dataset that is used: rows read in batches
        column_names = ["text", "meta"]
        _fingerprint = "abc123"
        rows = [*texts(200, seed=2), None]  # a missing text is skipped

        def __len__(self):
            return len(self.rows)

        def iter(self, batch_size):
            for start in range(0, len(self.rows), batch_size):
                yield {"text": self.rows[start : start + batch_size]}

    def load_dataset(name, split):
        calls.append((name, split))
        return FakeDataset()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    spec = DataSpec(
        corpus="hf:someone/corpus@train[:10%]",
        seq_len=16,
        vocab_size=300,
        valid_fraction=0.1,
        test_fraction=0.1,
    )
    data = prepare_data(spec, tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    assert calls == [("someone/corpus", "train[:10%]")]
    assert data.manifest["source"]["kind"] == "huggingface"
    assert data.manifest["source"]["rows"] == 201
    assert sum(s["documents"] for s in data.manifest["splits"].values()) == 200
    assert len(data.split("train")) > 0


@pytest.mark.parametrize("name", ["owt-170m", "owt-170m-uniform"])
def test_owt_configs_have_the_published_shape(name):
    from tsdfm.models import CausalConfig, CausalLM, Denoiser, DenoiserConfig, count_parameters

    cfg = load_config(f"configs/{name}.yaml")
    m, c = cfg.teacher.model, cfg.compass.model
    assert (m.dim, m.n_layers, m.n_heads, cfg.data.seq_len) == (768, 12, 12, 1024)
    assert cfg.data.tokenizer_path and cfg.flow.source == (
        "mask" if name == "owt-170m" else "uniform"
    )
    vocab = 50257 + 3  # GPT-2 plus [EOS], [PAD], [MASK]
    with torch.device("meta"):  # shapes only, no memory
        teacher = Denoiser(
            DenoiserConfig(
                vocab,
                vocab - 1,
                1024,
                dim=m.dim,
                n_layers=m.n_layers,
                n_heads=m.n_heads,
                time_cond=cfg.flow.source == "uniform",
            )
        )
        compass = CausalLM(CausalConfig(vocab, vocab - 1, 1024, c.dim, c.n_layers, c.n_heads))
    n = count_parameters(teacher)
    assert 150e6 < n < 215e6  # 162M (mask); 205M with the uniform source's adaLN
    assert count_parameters(compass) <= 0.25 * n  # the compass stays lightweight
    for section in (cfg.teacher.train, cfg.compass.train, cfg.student.train):
        assert section.device == "auto" and section.precision == "auto"
