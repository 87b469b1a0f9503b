"""Hugging Face evaluators: tiny random GPT-2 and Llama saved to a temp dir, loaded offline."""

import math
import random
import zipfile
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer as HFTok  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from tsdfm.artifacts import sha256_file  # noqa: E402
from tsdfm.data import default_cache_dir  # noqa: E402
from tsdfm.errors import TsdfmError  # noqa: E402
from tsdfm.evaluation import HFEvaluator  # noqa: E402
from tsdfm.evaluation import fetch as fetch_mod  # noqa: E402
from tsdfm.evaluation.fetch import SMOLLM2, PackagedModel, fetch_packaged, gguf_path  # noqa: E402
from tsdfm.evaluation.hf import dtype_kwarg, load_hf_causal_lm  # noqa: E402
from tsdfm.evaluation.registry import make_evaluator  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "slept"]


def texts(n, seed, lo=3, hi=10):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def hf_tokenizer(bos: str | None) -> PreTrainedTokenizerFast:
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts(200, 0), trainer)
    kw = {"eos_token": "<|endoftext|>", "pad_token": "<pad>"}
    if bos:
        kw["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def save_gpt2(directory, n_positions=32):
    tok = hf_tokenizer(bos=None)  # GPT-2 style: only <|endoftext|>
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=len(tok), n_positions=n_positions)
    cfg.bos_token_id = cfg.eos_token_id = tok.eos_token_id
    GPT2LMHeadModel(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return tok


def save_llama(directory):
    tok = hf_tokenizer(bos="<s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=len(tok),
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return tok


def reference_nll(model, ids: list[int]) -> float:
    """Direct full-sequence forward (no batching, no windows)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
    return -float(logp[torch.arange(len(ids) - 1), x[0, 1:]].sum())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hf_evaluator_matches_direct_forward(tmp_path, arch):
    tok = (save_gpt2 if arch == "gpt2" else save_llama)(tmp_path / arch)
    bos = tok.eos_token_id if arch == "gpt2" else tok.bos_token_id  # "auto" picks these
    ev = HFEvaluator(arch, tmp_path / arch, batch_size=3)
    batch = texts(7, 1)
    scores = ev.score(batch)
    ids = [[bos, *tok(t, add_special_tokens=False).input_ids] for t in batch]
    assert ev.encode(batch) == ids
    assert scores.tokens.tolist() == [len(x) - 1 for x in ids]  # every real token is scored
    want = [reference_nll(ev.model, x) for x in ids]
    assert scores.nll_sum == pytest.approx(want, rel=1e-4)  # padding + attention mask are exact
    assert scores.gen_ppl == pytest.approx(math.exp(sum(want) / scores.tokens.sum()), rel=1e-4)


def test_hf_long_text_slides_a_window(tmp_path):
    tok = save_gpt2(tmp_path / "g", n_positions=16)
    long = texts(2, 2, lo=40, hi=50)
    ev = HFEvaluator("g", tmp_path / "g", batch_size=4)
    scores = ev.score(long)
    n = [len(tok(t, add_special_tokens=False).input_ids) for t in long]
    assert min(n) > 16 and scores.tokens.tolist() == n
    assert all(math.isfinite(v) for v in scores.nll_sum)


def test_hf_loader_errors_and_spec(tmp_path):
    with pytest.raises(TsdfmError, match="not found"):
        load_hf_causal_lm(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TsdfmError, match="loadable Hugging Face"):
        load_hf_causal_lm(tmp_path / "empty")
    save_gpt2(tmp_path / "g")
    ev = make_evaluator(f"gpt={tmp_path / 'g'}")
    assert isinstance(ev, HFEvaluator) and ev.gguf_file is None
    assert dtype_kwarg() in ("dtype", "torch_dtype")
    with pytest.raises(TsdfmError, match="no token"):
        HFEvaluator("g", tmp_path / "g", bos="<|nope|>").score(["the cat"])


def test_fetch_extracts_and_checks_the_pinned_member(tmp_path, monkeypatch):
    """Offline: a wheel already in the cache with the pinned hash is reused, not downloaded."""
    payload = b"GGUF" + bytes(range(256)) * 64
    wheel = tmp_path / "cache" / "downloads" / "fake_model-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake_model/m.gguf", payload)
    digest = __import__("hashlib").sha256(payload).hexdigest()
    fake = PackagedModel(
        "fake-1m", "fake-model==1.0", "fake_model-1.0-*.whl", sha256_file(wheel),
        "fake_model/m.gguf", digest, None,
    )  # fmt: skip
    monkeypatch.setitem(fetch_mod.PACKAGED, "fake", fake)
    path = fetch_packaged("fake", tmp_path / "cache")
    assert path == tmp_path / "cache" / "evaluators" / "fake-1m" / "m.gguf"
    assert path.read_bytes() == payload
    assert fetch_packaged("fake", tmp_path / "cache") == path  # second call: nothing to do
    bad = PackagedModel(*[*fake.__dict__.values()][:5], "0" * 64, None)
    monkeypatch.setitem(fetch_mod.PACKAGED, "bad", bad)
    with pytest.raises(TsdfmError, match="expected 0000"):
        fetch_packaged("bad", tmp_path / "cache")
    with pytest.raises(TsdfmError, match="unknown evaluator"):
        fetch_packaged("gpt5")


def _smollm2_file():
    """The cached GGUF (tests point TSDFM_CACHE elsewhere, so also look in the user cache)."""
    for cache in (default_cache_dir(), Path.home() / ".cache" / "tsdfm"):
        path = gguf_path(SMOLLM2, cache)
        if path.is_file():
            return path
    return None


@pytest.mark.slow
def test_smollm2_gguf_scores_text():
    pytest.importorskip("gguf")
    path = _smollm2_file()
    if path is None:
        pytest.skip("SmolLM2 GGUF not in the cache: run `tsdfm evaluators fetch smollm2`")
    ev = make_evaluator(f"smollm2-135m={path.parent}")
    assert ev.gguf_file == path.name and ev.bos == "<|endoftext|>"
    good = "The cat sat on the mat. It was a sunny day and the children played outside."
    bad = "mat the sunny on played. day cat outside It children the was sat a and The"
    scores = ev.score([good, bad])
    per_tok = scores.nll_sum / scores.tokens
    assert ev.bos_id == 0 and per_tok[0] < per_tok[1]
