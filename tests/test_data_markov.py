"""The exact benchmark must be exact: every reference number is checked against a
hand computation or a Monte-Carlo estimate with a tolerance from its standard error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsdfm.data import MarkovChain, chain_floor_tv
from tsdfm.data.markov import _stationary_direct
from tsdfm.errors import TsdfmError


def kgram_matrix(chain: MarkovChain) -> np.ndarray:
    """Dense transition matrix of the k-gram chain, built independently of the library."""
    V, k = chain.vocab_size, chain.order
    S = V**k
    T = np.zeros((S, S))
    for c in range(S):
        for x in range(V):
            T[c, (c * V + x) % S] += chain.transition[c, x]
    return T


@pytest.fixture(scope="module")
def chain() -> MarkovChain:
    return MarkovChain(vocab_size=5, order=2, alpha=0.3, eps=0.05, seed=3)


def test_rows_are_distributions(chain):
    assert chain.transition.shape == (25, 5)
    assert chain.transition.dtype == np.float64
    np.testing.assert_allclose(chain.transition.sum(axis=1), 1.0, atol=1e-12)
    assert chain.transition.min() >= chain.eps / chain.vocab_size * (1 - 1e-12)


def test_stationary_is_stationary(chain):
    pi = chain.stationary
    assert pi.shape == (25,)
    np.testing.assert_allclose(pi.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(pi @ kgram_matrix(chain), pi, atol=1e-13)
    np.testing.assert_allclose(_stationary_direct(chain.transition, 5, 2), pi, atol=1e-12)


def test_log_prob_by_hand():
    c = MarkovChain(vocab_size=2, order=1, alpha=1.0, eps=0.1, seed=0)
    P = c.transition
    pi0 = P[1, 0] / (P[0, 1] + P[1, 0])  # two-state chain: pi_0 P01 = pi_1 P10
    hand = np.log(pi0) + np.log(P[0, 1]) + np.log(P[1, 1])
    np.testing.assert_allclose(c.log_prob(np.array([[0, 1, 1]])), [hand], rtol=1e-12)
    np.testing.assert_allclose(c.log_prob(torch.tensor([[0, 1, 1]])), [hand], rtol=1e-12)
    np.testing.assert_allclose(c.nll_per_token([[0, 1, 1]]), [-hand / 3], rtol=1e-12)


def test_log_prob_order2_matches_stationary_first_kgram(chain):
    seq = np.array([[4, 1, 3, 0]])
    hand = np.log(chain.stationary[4 * 5 + 1])
    hand += np.log(chain.transition[4 * 5 + 1, 3]) + np.log(chain.transition[1 * 5 + 3, 0])
    np.testing.assert_allclose(chain.log_prob(seq), [hand], rtol=1e-12)


def test_log_prob_rejects_bad_input(chain):
    with pytest.raises(TsdfmError, match="outside|lie in"):
        chain.log_prob(np.array([[0, 1, 5]]))
    with pytest.raises(TsdfmError, match="too short"):
        chain.log_prob(np.array([[0]]))


def test_sample_shape_and_determinism(chain):
    a = chain.sample(64, 20, seed=1)
    assert a.shape == (64, 20) and a.dtype == np.int64
    assert a.min() >= 0 and a.max() < 5
    np.testing.assert_array_equal(a, chain.sample(64, 20, seed=1))
    assert not np.array_equal(a, chain.sample(64, 20, seed=2))


def test_entropy_rate_matches_monte_carlo(chain):
    seqs = chain.sample(2000, 200, seed=11)
    first = -np.log(chain.stationary[seqs[:, 0] * 5 + seqs[:, 1]])
    per_transition = (-chain.log_prob(seqs) - first) / (200 - chain.order)
    se = per_transition.std(ddof=1) / np.sqrt(len(per_transition))
    assert abs(per_transition.mean() - chain.entropy_rate()) < 5 * se


def test_expected_nll_matches_monte_carlo(chain):
    L = 32
    nll = chain.nll_per_token(chain.sample(4000, L, seed=12))
    se = nll.std(ddof=1) / np.sqrt(len(nll))
    assert abs(nll.mean() - chain.expected_nll_per_token(L)) < 5 * se


def test_ngram_distribution_consistency(chain):
    for n in range(1, 5):
        p = chain.ngram_distribution(n)
        assert p.shape == (5**n,)
        np.testing.assert_allclose(p.sum(), 1.0, atol=1e-12)
        if n > 1:
            prev = chain.ngram_distribution(n - 1)
            np.testing.assert_allclose(p.reshape(-1, 5).sum(axis=1), prev, atol=1e-13)
            np.testing.assert_allclose(p.reshape(5, -1).sum(axis=0), prev, atol=1e-13)
    np.testing.assert_allclose(chain.ngram_distribution(2), chain.stationary)


def test_ngram_tv_small_and_shrinking(chain):
    few = chain_floor_tv(chain, 50, 32, 3, seed=5)
    many = chain_floor_tv(chain, 5000, 32, 3, seed=5)
    assert many < few
    assert many < 0.03
    assert 0.0 <= chain.ngram_tv(chain.sample(5000, 32, seed=6), 3) < 0.03


def test_ngram_tv_detects_wrong_distribution(chain):
    uniform = np.random.default_rng(0).integers(0, 5, size=(2000, 32))
    assert chain.ngram_tv(uniform, 3) > 5 * chain_floor_tv(chain, 2000, 32, 3, seed=1)


def test_seed_determines_chain():
    a = MarkovChain(8, 1, 0.1, 0.01, seed=7)
    b = MarkovChain.from_dict(a.to_dict())
    np.testing.assert_array_equal(a.transition, b.transition)
    np.testing.assert_array_equal(a.stationary, b.stationary)
    assert not np.array_equal(a.transition, MarkovChain(8, 1, 0.1, 0.01, seed=8).transition)
    assert "seed=7" in repr(a)


def test_small_alpha_gives_sparse_rows_and_bounded_nll():
    c = MarkovChain(64, 1, 0.05, 0.01, seed=0)
    top3 = np.sort(c.transition, axis=1)[:, -3:].sum(axis=1)
    assert top3.mean() > 0.7  # a few likely successors per context, like text
    assert -np.log(c.transition.min()) <= np.log(64 / 0.01) + 1e-9
    assert 0 < c.entropy_rate() < np.log(64)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(vocab_size=1, order=1, alpha=0.1, eps=0.01, seed=0),
        dict(vocab_size=4, order=0, alpha=0.1, eps=0.01, seed=0),
        dict(vocab_size=4, order=1, alpha=0.0, eps=0.01, seed=0),
        dict(vocab_size=4, order=1, alpha=0.1, eps=1.5, seed=0),
        dict(vocab_size=4096, order=3, alpha=0.1, eps=0.01, seed=0),
    ],
)
def test_bad_params_raise(kwargs):
    with pytest.raises(TsdfmError):
        MarkovChain(**kwargs)
