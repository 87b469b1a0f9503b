"""Novel-word rate: invented words counted without any model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from studylib.words import inner_words, novel_words, vocabulary

from tsdfm.data import DataSpec, MarkovSpec, load_prepared, prepare_data
from tsdfm.generation import SampleSet, write_samples

WORDS = "the a cat dog bird sat ran on under mat tree red blue big small".split()


def test_inner_words_drop_cut_ends_punctuation_and_non_words():
    text = 'ca sat, on "The" mat... 1984 (big) -- tre'
    # first ('ca') and last ('tre') pieces may be cut by the block; '1984' and '--' have no letter
    assert inner_words(text) == ["sat", "on", "the", "mat", "big"]
    assert inner_words("one") == [] and inner_words("") == []


def test_novel_words_counts_only_unknown_words():
    known = vocabulary(["x the cat sat on the mat x"])
    assert known == {"the", "cat", "sat", "on", "mat"}
    r = novel_words(["x the cta sat on teh mat cta x", "x Cat. x"], known)
    assert (r.words, r.novel) == (8, 3)
    assert r.rate == pytest.approx(3 / 8)
    assert r.top[0] == ("cta", 2)
    assert np.isnan(novel_words([], known).rate)


def test_script_separates_spelling_from_order(tmp_path, load_script, prepare_texts):
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) for _ in range(300)]
    data = load_prepared(prepare_texts(corpus))
    meta = {"tokenizer_fingerprint": data.tokenizer.fingerprint(), "steps": 8}
    real = torch.as_tensor(np.asarray(data.split("train")[:16]))
    # invented words: uniformly random non-special tokens glue byte and merge pieces together
    g = torch.Generator().manual_seed(0)
    scrambled = torch.randint(0, data.tokenizer.n_real, real.shape, generator=g)
    files = [
        write_samples(
            tmp_path / "real.jsonl", SampleSet(real, data.tokenizer.decode_batch(real), meta)
        ),
        write_samples(
            tmp_path / "scrambled.jsonl",
            SampleSet(scrambled, data.tokenizer.decode_batch(scrambled), meta),
        ),
    ]
    out = tmp_path / "novel.md"
    script = load_script("novel_words")
    assert (
        script.main(
            ["--data", str(tmp_path / "data"), "--samples", *map(str, files), "--out", str(out)]
        )
        == 0
    )
    rates = {
        line.split(" | ")[0].strip("| "): float(line.split(" | ")[4].rstrip("%"))
        for line in out.read_text().splitlines()
        if line.startswith("| ") and "%" in line
    }
    assert rates["real"] == 0.0  # training text: every word known
    assert rates["held-out text (test split)"] == 0.0  # same 15-word language, [EOS] separates
    assert rates["word salad (the same, words shuffled)"] < 5.0  # order gone, spelling kept
    assert rates["scrambled"] > 50.0


def test_script_refuses_markov_data(tmp_path, load_script):
    markov = MarkovSpec(vocab_size=8, num_train=64, num_valid=8, num_test=8)
    spec = DataSpec(corpus="markov", seq_len=16, markov=markov)
    prepare_data(spec, tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    f = tmp_path / "none.jsonl"
    assert (
        load_script("novel_words").main(
            ["--data", str(tmp_path / "data"), "--samples", str(f), "--out", str(tmp_path / "o.md")]
        )
        == 2
    )
