"""Exact evaluation on the ``markov`` corpus, where the true distribution is known.

* truth-NLL: mean nats per token of the samples under the chain. A perfect sampler scores the
  chain's expected value ``(H_init + (L - k) H) / L``; below it means mode-seeking, above it errors.
* n-gram TV: total variation between the samples' pooled n-gram frequencies and the chain's
  exact stationary n-gram distribution; cannot be gamed by collapsing onto likely sequences.
* floor: the TV of as many *true* chain samples (finite samples never reach 0).
"""

from __future__ import annotations

import numpy as np
import torch

from tsdfm.data.markov import MarkovChain
from tsdfm.errors import TsdfmError
from tsdfm.evaluation.metrics import unigram_entropy


def truth_metrics(
    chain: MarkovChain, ids: torch.Tensor | np.ndarray, floor_seed: int = 12345, orders=(2, 3)
) -> dict:
    arr = np.asarray(ids, dtype=np.int64)
    if arr.ndim != 2:
        raise TsdfmError("samples must be a [N, L] array")
    if arr.min() < 0 or arr.max() >= chain.vocab_size:
        raise TsdfmError(
            f"samples contain ids outside the chain's {chain.vocab_size} symbols "
            "(unfinished [MASK] tokens or a model from another corpus)"
        )
    n, length = arr.shape
    nll = chain.nll_per_token(arr)
    truth = chain.sample(n, length, seed=floor_seed)
    out = {
        "num_samples": n,
        "seq_len": length,
        "truth_nll": float(nll.mean()),
        "truth_nll_se": float(nll.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
        "expected_nll": chain.expected_nll_per_token(length),
        "entropy_rate": chain.entropy_rate(),
        "entropy": float(unigram_entropy(arr).mean()),
        "entropy_data": float(unigram_entropy(truth).mean()),
        "ngram_tv": {},
        "ngram_tv_floor": {},
    }
    for k in orders:
        out["ngram_tv"][str(k)] = chain.ngram_tv(arr, k)
        out["ngram_tv_floor"][str(k)] = chain.ngram_tv(truth, k)
    return out
