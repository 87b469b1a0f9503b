"""Reference rows every model row is read against: real text, and the same text as word salad.

* ``data``: held-out *test* text cut into the samples' length L. The floor: what real text
  scores under each evaluator.
* ``salad``: the same sequences with their **words shuffled** inside each sequence. Every token
  is kept (so the unigram entropy is exactly the data row's), only the order goes. It turns
  "clearly better than word salad" into a number: a sampler that has learned anything beyond
  token frequencies must score well below this row under every evaluator, at equal entropy.

A word is a run of tokens that starts at a token whose text begins with whitespace (byte-level
BPE keeps the leading space on the word's first piece, punctuation stays attached to the word
before it); special tokens are words of their own. Shuffling whole words rather than tokens
keeps every word spelled correctly, so the row measures order, not invented words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsdfm.errors import TsdfmError


@dataclass
class SampleFile:
    """One set of sequences to score: a samples file, or a reference row (``path`` None)."""

    path: Path | None
    ids: np.ndarray  # [N, L]
    texts: list[str]
    meta: dict[str, Any]


def reference_sample(data, num: int, length: int) -> SampleFile:
    """``num`` test-split sequences of ``length`` tokens (block prefixes, or a re-cut stream
    when ``length`` exceeds the stored block length)."""
    test = data.split("test")
    if length <= data.seq_len:
        ids = test[: min(num, len(test))][:, :length]
    else:
        per_block = data.seq_len
        need = -(-num * length // per_block)
        flat = test[: min(need, len(test))].ravel()
        n = min(num, flat.size // length)
        ids = flat[: n * length].reshape(n, length)
    if len(ids) == 0:
        raise TsdfmError(
            f"the test split of {data.directory} has no sequence of {length} tokens; prepare "
            "more data (a larger data.test_fraction)"
        )
    if len(ids) < num:
        print(
            f"warning: the test split holds only {len(ids)} sequences of {length} tokens (< {num})"
        )
    texts = data.tokenizer.decode_batch(ids, skip_special=True)
    return SampleFile(None, np.asarray(ids), texts, {"method": "data"})


def word_starts(tokenizer) -> np.ndarray:
    """``starts[i]``: token ``i`` begins a word (its text starts with whitespace, or it is a
    special token)."""
    if tokenizer.kind != "bpe":
        raise TsdfmError("word salad needs a text (BPE) tokenizer; the markov corpus has no words")
    starts = np.zeros(tokenizer.vocab_size, dtype=bool)
    for i in range(tokenizer.vocab_size):
        if i in tokenizer.special_ids:
            starts[i] = True
        else:
            piece = tokenizer.decode([i], skip_special=False)
            starts[i] = piece[:1].isspace()
    return starts


def shuffle_words(ids: np.ndarray, starts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each row's words in a random order (seeded); the multiset of tokens is unchanged."""
    ids = np.asarray(ids)
    rng = np.random.default_rng(seed)
    out = np.empty_like(ids)
    for r, row in enumerate(ids):
        cuts = np.flatnonzero(starts[row])
        words = np.split(row, cuts[cuts > 0])
        out[r] = np.concatenate([words[j] for j in rng.permutation(len(words))])
    return out


def word_salad(ref: SampleFile, tokenizer, seed: int = 0) -> SampleFile:
    """The ``salad`` row: ``ref``'s sequences with their words shuffled."""
    ids = shuffle_words(ref.ids, word_starts(tokenizer), seed)
    texts = tokenizer.decode_batch(ids, skip_special=True)
    return SampleFile(None, ids, texts, {"method": "salad"})
