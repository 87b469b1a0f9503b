"""Evaluators: known-logit project LM, re-tokenization, special-token stripping, truth."""

import math
import random

import numpy as np
import pytest
import torch

from tsdfm.data import MarkovChain, Tokenizer
from tsdfm.errors import TsdfmError
from tsdfm.evaluation import ProjectEvaluator, TruthEvaluator, pooled_ppl
from tsdfm.evaluation.harness import load_sample_file
from tsdfm.evaluation.metrics import mean_sample_ppl
from tsdfm.evaluation.registry import build_evaluators, make_evaluator
from tsdfm.generation import SampleSet, write_samples
from tsdfm.models import CausalConfig, CausalLM


def constant_lm(tok: Tokenizer, max_len: int, seed: int = 0) -> tuple[CausalLM, torch.Tensor]:
    """A CausalLM whose logits are the same vector z at every position, whatever the input:
    the final LayerNorm outputs its bias b = e_0, and head column 0 is z."""
    cfg = CausalConfig(
        vocab_size=tok.vocab_size,
        num_classes=tok.num_classes,
        max_len=max_len,
        dim=8,
        n_layers=1,
        n_heads=2,
        tokenizer_fingerprint=tok.fingerprint(),
    )
    model = CausalLM(cfg).eval()
    z = torch.randn(tok.num_classes, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.norm.weight.zero_()
        model.norm.bias.zero_()
        model.norm.bias[0] = 1.0
        model.head.weight.zero_()
        model.head.weight[:, 0] = z
    return model, torch.log_softmax(z, -1)


def synthetic_text(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "quiet", "north"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def two_tokenizers():
    texts = synthetic_text(300, 0)
    a = Tokenizer.train_bpe(texts, vocab_size=270)
    b = Tokenizer.train_bpe(texts, vocab_size=300)
    assert a.fingerprint() != b.fingerprint()
    return a, b


def test_project_evaluator_pooled_ppl_by_hand(tmp_path):
    tok = Tokenizer.identity(5)
    model, logp = constant_lm(tok, max_len=4)  # texts up to 10 tokens: sliding windows
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    ev = ProjectEvaluator("ar-small", tmp_path / "m")
    texts = ["0 1 2", "3 3", "4 0 1 2 3 4 4 4 0 1"]
    scores = ev.score(texts)
    ids = [[int(t) for t in s.split()] for s in texts]
    want = [-sum(logp[i].item() for i in row) for row in ids]  # BOS predicts the first token
    assert scores.tokens.tolist() == [3, 2, 10]
    assert scores.nll_sum == pytest.approx(want, rel=1e-5)
    total = sum(want) / 15
    assert scores.gen_ppl == pytest.approx(math.exp(total), rel=1e-5)
    assert scores.gen_ppl != pytest.approx(mean_sample_ppl(scores.nll_sum, scores.tokens))
    assert pooled_ppl(scores.nll_sum, scores.tokens) == scores.gen_ppl


def test_retokenization_uses_the_evaluators_tokenizer(tmp_path, two_tokenizers):
    tok_a, tok_b = two_tokenizers
    model, logp = constant_lm(tok_b, max_len=8, seed=1)
    model.save_pretrained(tmp_path / "b", tokenizer=tok_b)
    texts = synthetic_text(6, 1)
    ids_a = [tok_a.encode(t) for t in texts]
    ids_b = [tok_b.encode(t) for t in texts]
    assert [len(x) for x in ids_a] != [len(x) for x in ids_b]  # the two really differ
    decoded = [tok_a.decode(x) for x in ids_a]  # what a samples file made with A holds
    assert decoded == texts
    ev = ProjectEvaluator("b", tmp_path / "b")
    assert ev.encode(decoded) == [[model.bos_id, *x] for x in ids_b]
    scores = ev.score(decoded)
    assert scores.tokens.tolist() == [len(x) for x in ids_b]
    want = [-sum(logp[i].item() for i in row) for row in ids_b]
    assert scores.nll_sum == pytest.approx(want, rel=1e-5)


def test_special_tokens_are_stripped_before_scoring(tmp_path, two_tokenizers):
    tok, _ = two_tokenizers
    text = "alpha beta gamma"
    body = tok.encode(text)
    ids = torch.tensor([[tok.eos_id, *body, tok.pad_id, tok.mask_id, tok.eos_id]])
    garbage = "[EOS]alpha beta gamma[PAD][MASK][EOS]"  # a file's text field is not trusted
    path = write_samples(
        tmp_path / "s.jsonl",
        SampleSet(ids=ids, texts=[garbage], meta={"tokenizer_fingerprint": tok.fingerprint()}),
    )
    sf = load_sample_file(path, tok)
    assert sf.texts == [text]
    model, logp = constant_lm(tok, max_len=32)
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    scores = ProjectEvaluator("m", tmp_path / "m").score(sf.texts)
    assert scores.tokens.tolist() == [len(body)]
    # literal "[EOS]" text is characters, never the special id
    enc = ProjectEvaluator("m", tmp_path / "m").encode(["[EOS]"])[0]
    assert tok.eos_id not in enc and len(enc) > 2


def test_truth_evaluator_is_exact():
    chain = MarkovChain(vocab_size=6, order=1, alpha=0.2, eps=0.01, seed=3)
    ids = chain.sample(50, 12, seed=1)
    ev = TruthEvaluator(chain)
    scores = ev.score([], ids)
    assert scores.nll_sum == pytest.approx(-chain.log_prob(ids))
    assert scores.tokens.tolist() == [12] * 50
    assert math.log(scores.gen_ppl) == pytest.approx(chain.nll_per_token(ids).mean())
    extra = ev.row_metrics(ids)
    assert extra["entropy_rate"] == pytest.approx(chain.entropy_rate())
    assert set(extra["ngram_tv"]) == {"2", "3"} and extra["ngram_order"] == 2
    with pytest.raises(TsdfmError, match="outside the chain"):
        ev.score([], np.full((2, 12), 6))


def test_evaluator_specs(tmp_path):
    tok = Tokenizer.identity(5)
    constant_lm(tok, 4)[0].save_pretrained(tmp_path / "m", tokenizer=tok)
    evs = build_evaluators([f"ar-small={tmp_path / 'm'}"])
    assert isinstance(evs["ar-small"], ProjectEvaluator)
    # device "auto" (the default) is the GPU when CUDA is available, else the CPU
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert evs["ar-small"].device == expected
    if not torch.cuda.is_available():
        with pytest.raises(TsdfmError, match="no CUDA"):
            make_evaluator(f"x={tmp_path / 'm'}", device="cuda")
    with pytest.raises(TsdfmError, match="twice"):
        build_evaluators([f"a={tmp_path / 'm'}", f"a={tmp_path / 'm'}"])
    with pytest.raises(TsdfmError, match="markov"):
        make_evaluator("truth")
    with pytest.raises(TsdfmError, match="needs a location"):
        make_evaluator("ar-large")
    with pytest.raises(TsdfmError, match="not found"):
        make_evaluator(f"x={tmp_path / 'missing'}")
    with pytest.raises(TsdfmError, match="evaluators fetch smollm2"):
        make_evaluator("smollm2-135m", cache_dir=tmp_path / "empty-cache")
