"""Sampler exactness against an oracle denoiser for targets with a known distribution.

For a factorised target pi (independent positions) the exact mixture-path denoiser is
known in closed form, so with the exact jump rule the final samples must follow pi for
*any* number of steps. Tolerances are 5 binomial standard errors of the sample size.
"""

import math

import pytest
import torch

from tsdfm.flow import CosineScheduler, PolynomialScheduler, sample, sample_source

L, V = 4, 5
MASK = V


def _target() -> torch.Tensor:
    """A different categorical per position, all probabilities >= 0.02."""
    g = torch.Generator().manual_seed(123)
    logits = torch.randn(L, V, generator=g, dtype=torch.float64) * 1.2
    return torch.softmax(logits, -1)


def oracle(target: torch.Tensor, sched, source: str):
    """Exact denoiser p(x1[i] | x_t, t) for the factorised target under the mixture path.

    mask: at a masked position, p = pi_i (positions are independent).
    uniform: p(y | x, t) ∝ pi_i(y) * (kappa(t) [x == y] + (1 - kappa(t)) / V).
    """
    log_pi = target.log()

    def model_fn(x, t, dt):
        b = x.shape[0]
        if source == "mask":
            return log_pi.expand(b, L, V).clone()
        k = sched.kappa(t.to(torch.float64))[:, None, None]
        same = torch.nn.functional.one_hot(x.clamp(max=V - 1), V).to(torch.float64)
        return log_pi + torch.log(k * same + (1 - k) / V)

    return model_fn


def _run(target, sched, source, steps, batch, seed, jump_rule="exact"):
    g = torch.Generator().manual_seed(seed)
    x0 = sample_source((batch, L), source, MASK, V, g)
    res = sample(
        oracle(target, sched, source), x0, steps, sched, source, MASK, g, jump_rule=jump_rule
    )
    return res


def _marginals(ids):
    return (
        torch.stack([torch.bincount(ids[:, i], minlength=V) for i in range(L)]).double()
        / ids.shape[0]
    )


def _assert_matches(emp, target, n):
    se = (target * (1 - target) / n).sqrt()
    z = ((emp - target).abs() / se).max().item()
    assert z < 5.0, f"max z-score {z:.2f}\nempirical {emp}\ntarget {target}"


CASES = [
    (steps, batch, source, sched)
    for steps, batch in [(1, 20000), (2, 20000), (8, 20000), (1024, 600)]
    for source in ("mask", "uniform")
    for sched in (PolynomialScheduler(1.0), CosineScheduler())
    if steps != 1024 or isinstance(sched, PolynomialScheduler)
]


@pytest.mark.parametrize("steps,batch,source,sched", CASES, ids=str)
def test_final_marginals_match_target(steps, batch, source, sched):
    target = _target()
    res = _run(target, sched, source, steps, batch, seed=steps)
    assert res.nfe_nominal == res.nfe_actual == steps
    assert int(res.ids.max()) < V and int(res.ids.min()) >= 0
    _assert_matches(_marginals(res.ids), target, batch)


class _AtPositions:
    """The oracle behind the sampler's head-at-jumps interface: it is asked only for the rows
    with a switching position, and only for the logits at those positions."""

    supports_positions = True

    def __init__(self, fn):
        self.fn, self.rows = fn, []

    def __call__(self, x, t, dt, positions=None):
        self.rows.append(x.shape[0])
        full = self.fn(x, t, dt)
        return full if positions is None else full[positions]


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("steps", [1, 2, 8, 64])
def test_head_at_jumps_keeps_the_target_marginals(source, steps):
    """Switches drawn before the model call, landings drawn at those positions only: the final
    marginals are still exactly pi, and steps in which a row moves nothing skip that row."""
    target, batch, sched = _target(), 20000, CosineScheduler()
    model = _AtPositions(oracle(target, sched, source))
    g = torch.Generator().manual_seed(100 + steps)
    x0 = sample_source((batch, L), source, MASK, V, g)
    res = sample(model, x0, steps, sched, source, MASK, g)
    _assert_matches(_marginals(res.ids), target, batch)
    assert res.nfe_per_sample == sum(model.rows) / batch
    if steps == 64:  # with L = 4 most rows move nothing in most of 64 small steps
        assert res.nfe_per_sample < steps / 2


@pytest.mark.slow
@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_final_marginals_match_target_1024_steps_large_batch(source):
    target, batch = _target(), 8000
    res = _run(target, CosineScheduler(), source, 1024, batch, seed=7)
    _assert_matches(_marginals(res.ids), target, batch)


def test_first_jump_rule_is_not_exact_for_uniform_source():
    """From t = 0 with h = 1 the first-jump rule always leaves x0 and lands on pi restricted
    to y != x0, so the final marginal is sum_x (1/V) pi(y) [y != x] / (1 - pi(x)), not pi.
    This is why jump_rule="exact" is the default."""
    target, batch = _target(), 20000
    res = _run(target, PolynomialScheduler(), "uniform", 1, batch, seed=11, jump_rule="first_jump")
    emp = _marginals(res.ids)
    not_same = 1 - torch.eye(V, dtype=torch.float64)
    predicted = torch.stack(
        [(not_same * target[i][None, :] / (1 - target[i][:, None])).sum(0) / V for i in range(L)]
    )
    _assert_matches(emp, predicted, batch)
    se = (target * (1 - target) / batch).sqrt()
    assert ((emp - target).abs() / se).max().item() > 10


def test_non_factorised_target_few_step_error():
    """Two perfectly correlated positions, target (0,0) or (1,1) with prob 1/2 each. The
    exact denoiser copies an unmasked neighbour, else predicts (1/2, 1/2). One step unmasks
    both positions together, giving the product of marginals (P(equal) = 1/2); with N steps
    both unmask in the same step with probability ~1/N, so P(equal) ~ 1 - 1/(2N)."""
    v, mask = 2, 2

    def model_fn(x, t, dt):
        other = x.flip(1)
        logits = torch.zeros(*x.shape, v, dtype=torch.float64)
        known = other != mask
        onehot = torch.nn.functional.one_hot(other.clamp(max=v - 1), v).to(torch.float64)
        return torch.where(known[..., None], (onehot - 1) * 1e4, logits)

    batch = 8000
    for steps, expected in [(1, 0.5), (64, 1 - 1 / 128)]:
        g = torch.Generator().manual_seed(steps)
        x0 = torch.full((batch, 2), mask)
        ids = sample(model_fn, x0, steps, PolynomialScheduler(), "mask", mask, g).ids
        equal = (ids[:, 0] == ids[:, 1]).double().mean().item()
        assert abs(equal - expected) < 5 * math.sqrt(expected * (1 - expected) / batch) + 1e-3
