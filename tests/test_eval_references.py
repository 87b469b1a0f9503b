"""Reference rows: held-out text and the word-salad control (same words, shuffled)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from tsdfm.data import Tokenizer, load_prepared
from tsdfm.errors import TsdfmError
from tsdfm.evaluation import Evaluator, Scores
from tsdfm.evaluation.harness import evaluate
from tsdfm.evaluation.metrics import entropy_stats
from tsdfm.evaluation.references import SampleFile, shuffle_words, word_salad, word_starts
from tsdfm.generation import SampleSet, write_samples

WORDS = "the a cat dog bird sat ran on under mat tree quickly slowly red blue big small".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe(sentences(300), vocab_size=300)


class OrderEvaluator(Evaluator):
    """Costs 1 nat per word that follows a word it never follows in the corpus (``the`` after
    ``the`` and so on), else 0.1: a stand-in LM that only cares about order."""

    name = "order"

    def __init__(self, corpus: list[str]):
        self.pairs = {p for s in corpus for p in zip(s.split(), s.split()[1:], strict=False)}

    def score(self, texts, ids=None):
        nll, n = [], []
        for t in texts:
            w = t.split()
            pairs = list(zip(w, w[1:], strict=False))
            nll.append(sum(0.1 if p in self.pairs else 1.0 for p in pairs))
            n.append(max(len(pairs), 1))
        return Scores(np.array(nll, dtype=np.float64), np.array(n, dtype=np.int64))


def test_word_starts_mark_leading_space_and_specials(bpe):
    starts = word_starts(bpe)
    assert starts[bpe.encode(" cat")[0]] and not starts[bpe.encode(".")[0]]
    assert all(starts[i] for i in bpe.special_ids)


def test_shuffle_keeps_every_token_and_every_word(bpe):
    texts = [" " + s for s in sentences(20, seed=3)]
    L = min(len(bpe.encode(t)) for t in texts)
    ids = np.array([bpe.encode(t)[:L] for t in texts])
    out = shuffle_words(ids, word_starts(bpe), seed=0)
    assert out.shape == ids.shape
    for a, b in zip(ids, out, strict=True):
        assert Counter(a.tolist()) == Counter(b.tolist())
        # whole words move: the decoded words are a permutation of the original's
        assert Counter(bpe.decode(a).split()) == Counter(bpe.decode(b).split())
    assert (out != ids).any(), "nothing was shuffled"
    assert entropy_stats(out) == entropy_stats(ids)
    assert np.array_equal(shuffle_words(ids, word_starts(bpe), seed=0), out)  # seeded


def test_word_salad_needs_words():
    with pytest.raises(TsdfmError, match="markov corpus has no words"):
        word_starts(Tokenizer.identity(8))


def grammatical(n: int, seed: int = 0) -> list[str]:
    """Sentences with a fixed word order (det adj noun verb prep det noun), so order matters."""
    rng = random.Random(seed)
    slots = [
        ["the", "a"],
        ["red", "blue", "big", "small"],
        ["cat", "dog", "bird"],
        ["sat", "ran"],
        ["on", "under"],
        ["the", "a"],
        ["mat", "tree"],
    ]
    return [
        " ".join(" ".join(rng.choice(s) for s in slots) + "." for _ in range(3)) for _ in range(n)
    ]


def test_harness_adds_salad_row_on_text(tmp_path, prepare_texts):
    corpus = grammatical(400, seed=1)
    data = load_prepared(prepare_texts(corpus))
    ids = torch.as_tensor(np.asarray(data.split("train")[:32]))  # "samples": real text
    meta = {"tokenizer_fingerprint": data.tokenizer.fingerprint(), "steps": 8}
    f = write_samples(
        tmp_path / "teacher_8.jsonl", SampleSet(ids, data.tokenizer.decode_batch(ids), meta)
    )
    res = evaluate(
        [f],
        {"order": OrderEvaluator(corpus)},
        tmp_path / "data",
        out_dir=tmp_path / "eval",
        verbose=False,
    )
    data_row, salad_row, model_row = res["rows"]
    assert (data_row["method"], salad_row["method"]) == ("data", "salad")
    assert salad_row["label"].startswith("word salad") and salad_row["samples"] is None
    assert salad_row["entropy"] == pytest.approx(data_row["entropy"])
    # order matters to the evaluator: shuffled words score far worse than the same words in order
    assert salad_row["gen_ppl"]["order"] > 1.5 * data_row["gen_ppl"]["order"]
    assert model_row["gen_ppl"]["order"] < salad_row["gen_ppl"]["order"]
    assert "word salad" in (tmp_path / "eval" / "report.md").read_text()
    ref = SampleFile(None, np.asarray(data.split("test")[:4]), [], {"method": "data"})
    salad = word_salad(ref, data.tokenizer)
    assert salad.meta["method"] == "salad" and len(salad.texts) == 4
