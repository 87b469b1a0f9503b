"""Model-free statistics and the sliding-window scorer, on hand-made inputs."""

import math

import numpy as np
import pytest
import torch

from tsdfm.evaluation import distinct_n, entropy_stats, pooled_ppl, unigram_entropy
from tsdfm.evaluation.metrics import mean_sample_ppl
from tsdfm.evaluation.scoring import plan_windows, score_sequences


def test_pooled_ppl_is_not_the_mean_of_sample_ppls():
    nll, n = [2.0, 10.0], [2, 5]  # per-sample PPL e^1 and e^2
    assert pooled_ppl(nll, n) == pytest.approx(math.exp(12 / 7))
    assert mean_sample_ppl(nll, n) == pytest.approx((math.e + math.e**2) / 2)
    assert mean_sample_ppl(nll, n) != pytest.approx(pooled_ppl(nll, n))
    # with equal token counts the mean of per-sample PPLs is the larger one (Jensen)
    assert mean_sample_ppl([2.0, 4.0], [2, 2]) > pooled_ppl([2.0, 4.0], [2, 2])
    assert math.isnan(pooled_ppl([0.0], [0]))


def test_unigram_entropy_by_hand():
    ids = np.array([[0, 0, 0, 0], [0, 1, 0, 1], [0, 1, 2, 3]])
    assert unigram_entropy(ids) == pytest.approx([0.0, math.log(2), math.log(4)])
    mean, std = entropy_stats(torch.as_tensor(ids))
    h = np.array([0.0, math.log(2), math.log(4)])
    assert mean == pytest.approx(h.mean()) and std == pytest.approx(h.std(ddof=1))
    p = np.array([3, 1]) / 4  # [5, 5, 5, 9]
    assert unigram_entropy([[5, 5, 5, 9]])[0] == pytest.approx(-(p * np.log(p)).sum())


def test_distinct_n_by_hand():
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    pooled = [[1, 2, 3], [1, 2, 3]]  # pooled over samples, never across their boundary
    assert distinct_n(pooled, 2) == pytest.approx(2 / 4)
    assert distinct_n(pooled, 3) == pytest.approx(1 / 2)
    assert distinct_n([[3, 1], [1, 3]], 2) == 1.0
    assert math.isnan(distinct_n([[1]], 2))


@pytest.mark.parametrize("length", [1, 2, 5, 8, 9, 23])
@pytest.mark.parametrize("context,stride", [(8, None), (8, 3), (2, None), (8, 100)])
def test_windows_score_every_target_once(length, context, stride):
    windows = plan_windows(length, context, stride)
    targets = [j for a, b, f in windows for j in range(f, b)]
    assert targets == list(range(1, length))
    for a, b, f in windows:
        assert 0 <= a < f <= b and b - a <= context
        assert a == 0 or f - a >= context - min(stride or context // 2, context - 1)


def _known_logits(vocab: int):
    """Logits that depend on the previous token only: row x_{j-1} of a fixed table."""
    table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
    return table, lambda ids, attn: table[ids]


def test_score_sequences_matches_hand_computation_with_windows_and_padding():
    table, forward = _known_logits(6)
    seqs = [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4], [5, 4], [3], [2, 2, 2, 1]]
    logp = torch.log_softmax(table, -1)
    want = [-sum(logp[s[j - 1], s[j]].item() for j in range(1, len(s))) for s in seqs]
    for batch_size in (1, 3, 16):
        for context in (3, 4, 64):  # the first sequence needs several windows at 3 and 4
            nll, n = score_sequences(seqs, forward, context, pad_id=0, batch_size=batch_size)
            assert n.tolist() == [10, 1, 0, 3]
            assert nll == pytest.approx(want, abs=1e-5)
