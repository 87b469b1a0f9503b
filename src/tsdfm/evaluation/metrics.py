"""Sample statistics that need no model: pooled perplexity, unigram entropy, distinct-n.

* Pooled generative perplexity over N samples with per-sample NLL sums ``s_i`` (nats) and
  token counts ``n_i``: ``PPL = exp(sum_i s_i / sum_i n_i)``. The mean of per-sample
  perplexities ``(1/N) sum_i exp(s_i / n_i)`` weighs samples, not tokens; with equal token
  counts it is >= the pooled value (Jensen, exp is convex), it is dominated by a few bad
  samples, and numbers computed that way are not comparable (DESIGN.md section 7).
* Unigram entropy of one sample: ``H = -sum_v f_v ln f_v`` with ``f_v`` the frequency of token
  v within that sample, in nats; averaged over samples with its standard deviation. Far below
  the data's value means mode collapse.
* distinct-n: ``|unique n-grams| / |n-grams|`` pooled over all samples (n-grams never cross a
  sample boundary); 1 when nothing repeats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def pooled_ppl(nll_sums: Sequence[float] | np.ndarray, counts: Sequence[int] | np.ndarray) -> float:
    """``exp(sum NLL / sum tokens)``; NaN when there is no token at all."""
    total = float(np.sum(np.asarray(counts, dtype=np.float64)))
    if total <= 0:
        return float("nan")
    return math.exp(float(np.sum(np.asarray(nll_sums, dtype=np.float64))) / total)


def mean_sample_ppl(nll_sums, counts) -> float:
    """Mean of per-sample perplexities: shown only to demonstrate why it is *not* used."""
    s = np.asarray(nll_sums, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    keep = n > 0
    return float(np.mean(np.exp(s[keep] / n[keep])))


def _rows(ids) -> list[np.ndarray]:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    return [np.asarray(r, dtype=np.int64).ravel() for r in ids]


def unigram_entropy(ids, num_classes: int | None = None) -> np.ndarray:
    """Per-sample entropy (nats) of the empirical unigram distribution of its tokens [N].

    ``num_classes`` is accepted for compatibility; the result does not depend on it.
    """
    del num_classes
    out = np.zeros(len(ids))
    for i, row in enumerate(_rows(ids)):
        if row.size == 0:
            continue
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        out[i] = float(-(p * np.log(p)).sum())
    return out


def entropy_stats(ids) -> tuple[float, float]:
    """(mean, standard deviation) of the per-sample unigram entropy, nats."""
    h = unigram_entropy(ids)
    return float(h.mean()), float(h.std(ddof=1)) if len(h) > 1 else 0.0


def distinct_n(ids, n: int) -> float:
    """Unique n-grams / total n-grams, pooled over samples; NaN when no sample has n tokens."""
    seen: set[tuple[int, ...]] = set()
    total = 0
    for row in _rows(ids):
        if row.size < n:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(row, n)
        total += len(windows)
        seen.update(map(tuple, windows.tolist()))
    return len(seen) / total if total else float("nan")
