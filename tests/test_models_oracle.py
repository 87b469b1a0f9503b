"""The exact markov denoiser: its posterior equals brute-force enumeration, and the exact
sampler driven by it reproduces the chain's distribution at many steps."""

import itertools

import numpy as np
import pytest
import torch

from tsdfm.data.markov import MarkovChain
from tsdfm.errors import TsdfmError
from tsdfm.flow import make_scheduler, sample, sample_source
from tsdfm.models.oracle import MarkovOracleDenoiser, MarkovUniformOracleDenoiser


def brute_posterior(chain, x, mask_id):
    """p(x_i | visible) for every position by enumerating all V^L sequences."""
    V, L = chain.vocab_size, len(x)
    post = np.zeros((L, V))
    for seq in itertools.product(range(V), repeat=L):
        if any(x[i] != mask_id and x[i] != seq[i] for i in range(L)):
            continue
        p = float(np.exp(chain.log_prob(np.array([seq]))[0]))
        for i, v in enumerate(seq):
            post[i, v] += p
    return post / post.sum(1, keepdims=True)


@pytest.mark.parametrize(
    "x", [[3, 3, 3, 3, 3], [3, 1, 3, 3, 0], [0, 3, 3, 2, 3], [2, 0, 1, 0, 2], [3, 3, 1, 3, 3]]
)
def test_posterior_matches_enumeration(x):
    chain = MarkovChain(vocab_size=3, order=1, alpha=0.5, eps=0.05, seed=1)
    oracle = MarkovOracleDenoiser(chain, max_len=5)
    got = oracle(torch.tensor([x])).double().exp()[0].numpy()
    want = brute_posterior(chain, x, mask_id=3)
    masked = np.array(x) == 3
    np.testing.assert_allclose(got[masked], want[masked], atol=1e-6)  # float32 logits


def test_many_step_sampling_recovers_the_chain():
    chain = MarkovChain(vocab_size=8, order=1, alpha=0.2, eps=0.01, seed=0)
    L, n = 12, 4000
    oracle = MarkovOracleDenoiser(chain, L)
    gen = torch.Generator().manual_seed(0)
    x0 = sample_source((n, L), "mask", 8, 8, gen)
    ids = sample(oracle, x0, 64, make_scheduler("polynomial"), "mask", 8, gen, cache=True).ids
    truth = chain.sample(n, L, seed=1)
    # as close to the chain as as many true samples are (bigram TV), and far better than 1 step
    tv_model, tv_true = chain.ngram_tv(ids.numpy(), 2), chain.ngram_tv(truth, 2)
    assert tv_model < 1.3 * tv_true + 0.01
    one = sample(oracle, x0, 1, make_scheduler("polynomial"), "mask", 8, gen, cache=True).ids
    assert chain.ngram_tv(one.numpy(), 2) > 3 * tv_model


def test_higher_orders_are_refused():
    chain = MarkovChain(vocab_size=4, order=2, alpha=0.5, eps=0.05, seed=0)
    with pytest.raises(TsdfmError, match="order-1"):
        MarkovOracleDenoiser(chain, 8)


def brute_uniform_posterior(chain, x, kappa):
    """p(x1_i | x_t) under the uniform-source emission, by enumerating all V^L sequences."""
    V, L = chain.vocab_size, len(x)
    post = np.zeros((L, V))
    for seq in itertools.product(range(V), repeat=L):
        p = float(np.exp(chain.log_prob(np.array([seq]))[0]))
        for i in range(L):
            p *= kappa * (x[i] == seq[i]) + (1 - kappa) / V
        for i, v in enumerate(seq):
            post[i, v] += p
    return post / post.sum(1, keepdims=True)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.8, 1.0])
@pytest.mark.parametrize("x", [[0, 1, 2, 0, 1], [2, 2, 2, 2, 2], [1, 0, 0, 2, 1]])
def test_uniform_posterior_matches_enumeration(x, t):
    chain = MarkovChain(vocab_size=3, order=1, alpha=0.5, eps=0.05, seed=1)
    oracle = MarkovUniformOracleDenoiser(chain, 5, make_scheduler("polynomial", 2.0))
    got = oracle(torch.tensor([x]), torch.tensor([t])).double().exp()[0].numpy()
    # kappa(t) = t^2: the oracle reads the noise level through the path's scheduler
    want = brute_uniform_posterior(chain, x, t**2)
    np.testing.assert_allclose(got, want, atol=1e-6)
    if t == 0.0:  # no signal: the chain's marginal, the stationary distribution everywhere
        np.testing.assert_allclose(got, np.tile(chain.stationary, (5, 1)), atol=1e-6)


def test_uniform_many_step_sampling_recovers_the_chain():
    chain = MarkovChain(vocab_size=8, order=1, alpha=0.2, eps=0.01, seed=0)
    L, n, sched = 12, 4000, make_scheduler("polynomial")
    oracle = MarkovUniformOracleDenoiser(chain, L, sched)
    gen = torch.Generator().manual_seed(0)
    x0 = sample_source((n, L), "uniform", 8, 8, gen)
    ids = sample(oracle, x0, 64, sched, "uniform", 8, gen).ids
    truth = chain.sample(n, L, seed=1)
    tv_model, tv_true = chain.ngram_tv(ids.numpy(), 2), chain.ngram_tv(truth, 2)
    assert tv_model < 1.3 * tv_true + 0.01
    one = sample(oracle, x0, 1, sched, "uniform", 8, gen).ids
    assert chain.ngram_tv(one.numpy(), 2) > 3 * tv_model


def test_uniform_oracle_refuses_bad_input():
    chain = MarkovChain(vocab_size=4, order=1, alpha=0.5, eps=0.05, seed=0)
    oracle = MarkovUniformOracleDenoiser(chain, 8, make_scheduler("polynomial"))
    with pytest.raises(TsdfmError, match="needs t"):
        oracle(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(TsdfmError, match="no \\[MASK\\]"):
        oracle(torch.full((1, 8), 4), torch.tensor([0.5]))
    with pytest.raises(TsdfmError, match="order-1"):
        MarkovUniformOracleDenoiser(
            MarkovChain(vocab_size=4, order=2, alpha=0.5, eps=0.05, seed=0),
            8,
            make_scheduler("polynomial"),
        )
