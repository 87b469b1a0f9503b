"""Invented words: the share of a sample's words that never occur in the training text.

Why: an external evaluator (SmolLM2-135M) prices a misspelt or made-up word at many nats, so a
small text model can sit above word salad under it while beating the salad under evaluators
trained on the same corpus (docs/results/bench-long/). The novel-word rate separates the two
failures without any model: word *order* (what the salad row destroys) and word *spelling*
(what it keeps). Held-out text sets the floor: its rate is the share of rare words (names,
numbers spelt out) the training split happens not to contain.

Definition, on decoded text: a word is a whitespace-separated piece with its leading and
trailing punctuation stripped, lower-cased, kept if it contains a letter. The first and the last
piece of every sequence are dropped (a fixed-length block may cut a word at either end), for the
training text and the samples alike, so no row is charged for a cut it did not make. Special
tokens (``[EOS]`` between packed documents) separate words: :func:`decode_for_words` decodes
them as spaces, where plain decoding would glue the last word of one document to the first of
the next.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

_STRIP = string.punctuation + "\u201c\u201d\u2018\u2019\u2014\u2013\u2026\u00ab\u00bb"


def decode_for_words(tokenizer, ids) -> list[str]:
    """Decode rows of ids with every special token read as a space (a word boundary)."""
    specials = [tokenizer.decode([i], skip_special=False) for i in sorted(tokenizer.special_ids)]
    texts = tokenizer.decode_batch(ids, skip_special=False)
    for sp in specials:
        texts = [t.replace(sp, " ") for t in texts]
    return texts


def inner_words(text: str) -> list[str]:
    """The normalised words of one sequence, without its (possibly cut) first and last piece."""
    out = []
    for piece in text.split()[1:-1]:
        word = piece.strip(_STRIP).lower()
        if any(ch.isalpha() for ch in word):
            out.append(word)
    return out


def vocabulary(texts: Iterable[str]) -> set[str]:
    """Every inner word of ``texts`` (the known words a sample is checked against)."""
    known: set[str] = set()
    for text in texts:
        known.update(inner_words(text))
    return known


@dataclass
class NovelWords:
    """``rate = novel / words``; ``top``: the most frequent novel words with their counts."""

    words: int
    novel: int
    top: list[tuple[str, int]]

    @property
    def rate(self) -> float:
        return self.novel / self.words if self.words else float("nan")


def novel_words(texts: Iterable[str], known: set[str], top: int = 8) -> NovelWords:
    """Count the inner words of ``texts`` that are not in ``known``."""
    total = 0
    novel: Counter[str] = Counter()
    for text in texts:
        for word in inner_words(text):
            total += 1
            if word not in known:
                novel[word] += 1
    return NovelWords(total, sum(novel.values()), novel.most_common(top))
