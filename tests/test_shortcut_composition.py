"""The default shortcut target is the exact per-position law of two chained half steps.

Checked against a Monte Carlo run of the two half steps themselves, with a toy network whose
prediction depends on the midpoint (more visible context -> sharper and shifted predictions),
so ``E[p(k2)] != p(k1)``: with the exact denoiser (a martingale) every weighting of ``p(k1)``
and ``p(k2)`` has the same expectation and a test could not tell a biased target from the right
one. Each case also rebuilds the target this module used before the fix (the expectation's
weight ``(1 - q1) q2 / q`` applied per sample) from the same midpoints and asserts that the
same comparison rejects it, so the test is shown to have the power to fail.
"""

import pytest
import torch

from tsdfm.errors import TsdfmError
from tsdfm.flow import CosineScheduler, PolynomialScheduler, jump, switch_probability
from tsdfm.shaping import blind_jump, shortcut_target
from tsdfm.shaping.shortcut import check_target_options, resolve_committed

V, L, MASK = 4, 4, 4
N = 200_000  # midpoint draws per case (the issue asks for at least 100,000)
Z = 5.0  # tolerance in Monte Carlo standard errors
BIAS = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, -1.0]] * 2)  # [L, V]


def toy(x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Logits that lean toward the tokens already visible and, the more is visible, toward the
    last token: a crude 'context' effect that no martingale has."""
    visible = x != MASK
    counts = (torch.nn.functional.one_hot(torch.where(visible, x, 0), V) * visible[..., None]).sum(
        1
    )
    drift = torch.zeros(V)
    drift[-1] = 3.0 * float(L) ** -1
    logits = BIAS[None] + 1.2 * counts[:, None, :].float() + visible.sum(1).view(-1, 1, 1) * drift
    return (logits + 0.5 * t.view(-1, 1, 1)).float()


def start(source: str) -> torch.Tensor:
    x = torch.tensor([[MASK, 1, MASK, MASK]]) if source == "mask" else torch.tensor([[0, 1, 3, 3]])
    return x.expand(N, L).clone()


def two_half_steps(x_t, t, dt, sched, source, gen):
    """The reference: run the two chained half steps and return their landing tokens."""
    h = dt / 2
    m1 = jump(x_t, toy(x_t, t, h), t.double(), h.double(), sched, source, MASK, gen)
    return jump(m1, toy(m1, t + h, h), (t + h).double(), h.double(), sched, source, MASK, gen)


def landing_law(x2, x_t, q, source):
    """Per position, the law ``s`` of one student jump that matches the empirical landing law:
    ``P(y) = q s(y)`` at masked positions (mask source), ``(1 - q) delta(x_t) + q s(y)``
    (uniform); returns ``(s, standard error)`` as ``[L, V]``."""
    freq = torch.nn.functional.one_hot(x2.clamp(max=V - 1), V).double()
    freq = freq * (x2 != MASK).unsqueeze(-1)
    p = freq.mean(0)
    se = (p * (1 - p) / x2.shape[0]).sqrt() / q
    stay = torch.nn.functional.one_hot(x_t[0].clamp(max=V - 1), V).double() * (1 - q)
    s = (p - (stay if source == "uniform" else 0)) / q
    return s, se


def legacy_target(x_t, m1, t, dt, sched, source):
    """This module's target before the fix: ``q1/q p(k1) + (1 - q1) q2 / q p(k2)`` at positions
    still at the source in ``m1``, ``p(k1)`` where ``m1`` committed."""
    h = dt / 2
    q1 = switch_probability(t, h, sched)
    q = switch_probability(t, dt, sched)
    w1 = (q1 / q).float().view(-1, 1, 1)
    p1, p2 = toy(x_t, t, h).softmax(-1), toy(m1, t + h, h).softmax(-1)
    still = (m1 == MASK) if source == "mask" else torch.ones_like(m1, dtype=torch.bool)
    return torch.where(still.unsqueeze(-1), w1 * p1 + (1 - w1) * p2, p1)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize(
    "sched", [PolynomialScheduler(1.0), CosineScheduler()], ids=["linear", "cosine"]
)
@pytest.mark.parametrize("t0,dt0", [(0.0, 1.0), (0.25, 0.5)], ids=["t0-dt1", "interior"])
def test_exact_target_is_the_two_half_step_law(source, sched, t0, dt0):
    x_t = start(source)
    t, dt = torch.full((N,), t0), torch.full((N,), dt0)
    q = float(switch_probability(t0, dt0, sched))
    law, se_law = landing_law(
        two_half_steps(x_t, t, dt, sched, source, torch.Generator().manual_seed(0)), x_t, q, source
    )

    midpoints = []
    blind = blind_jump(sched, source, MASK)

    def recording_jump(x, logits, tt, h, g):
        midpoints.append(blind(x, logits, tt, h, g))
        return midpoints[-1]

    target = shortcut_target(
        toy, x_t, t, dt, method="heun", space="probs", scheduler=sched, source=source,
        mask_id=MASK, jump_fn=recording_jump, generator=torch.Generator().manual_seed(1),
    ).exp().double()  # fmt: skip
    assert torch.allclose(target.sum(-1), torch.ones(N, L, dtype=torch.float64), atol=1e-5)
    positions = [0, 2, 3] if source == "mask" else [0, 1, 2, 3]

    def z_score(per_sample):
        mean, se = per_sample.mean(0), per_sample.std(0) / N**0.5
        return ((mean - law) / (se**2 + se_law**2).sqrt().clamp_min(1e-9))[positions]

    z = z_score(target)
    assert z.abs().max() < Z, z
    legacy = legacy_target(x_t, midpoints[0], t, dt, sched, source).double()
    assert z_score(legacy).abs().max() > 2 * Z, "the comparison cannot tell the old bias apart"


def test_exact_target_with_committed_tokens_has_the_same_expectation():
    """committed=token (the value navigated midpoints use) is exact too for a blind jump."""
    sched, n = PolynomialScheduler(1.0), 40_000
    x_t = start("mask")[:n]
    t, dt = torch.full((n,), 0.25), torch.full((n,), 0.5)

    def target(committed):
        return shortcut_target(
            toy, x_t, t, dt, method="heun", space="probs", scheduler=sched, source="mask",
            mask_id=MASK, jump_fn=blind_jump(sched, "mask", MASK),
            generator=torch.Generator().manual_seed(5), committed=committed,
        ).exp().double()  # fmt: skip

    rb, tok = target("denoiser"), target("token")
    assert (tok - rb).abs().amax() > 0.5  # one-hots where the midpoint committed
    diff = tok.mean(0) - rb.mean(0)
    se = tok.std(0) / n**0.5
    assert (diff[[0, 2, 3]].abs() < Z * se[[0, 2, 3]] + 1e-4).all(), diff


def test_rk4_logits_chains_its_midpoints():
    """FS-DFM's RK4: m2 jumps from m1 and m3 from m2 (not from x_t), so a position committed in
    an earlier midpoint stays committed; with carry_over a committed position's target is its
    token."""
    sched = PolynomialScheduler(1.0)
    n = 256
    x_t = start("mask")[:n]
    t, dt = torch.full((n,), 0.0), torch.full((n,), 1.0)
    calls = []
    blind = blind_jump(sched, "mask", MASK)

    def spy(x, logits, tt, h, g):
        calls.append((x, blind(x, logits, tt, h, g), tt))
        return calls[-1][1]

    logp = shortcut_target(
        toy, x_t, t, dt, method="rk4", space="logits", scheduler=sched, source="mask",
        mask_id=MASK, jump_fn=spy, generator=torch.Generator().manual_seed(2),
    )  # fmt: skip
    assert len(calls) == 3
    assert torch.equal(calls[0][0], x_t)
    assert torch.equal(calls[1][0], calls[0][1]) and torch.equal(calls[2][0], calls[1][1])
    torch.testing.assert_close(calls[1][2], t + 0.5)
    m1 = calls[0][1]
    committed = (m1 != MASK) & (x_t == MASK)
    assert committed.any()
    # carried into every later midpoint, and into the target as (essentially) a point mass
    assert torch.equal(calls[2][1][committed], m1[committed])
    chosen = logp.exp().gather(-1, m1.clamp(max=V - 1).unsqueeze(-1)).squeeze(-1)
    assert (chosen[committed] > 0.999).all()


def test_refused_targets_and_auto_committed():
    with pytest.raises(TsdfmError, match="no composition of jumps"):
        check_target_options("denoiser", "probs", "mask", "rk4")
    from tsdfm.config import StudentConfig

    with pytest.raises(TsdfmError, match="no composition of jumps"):
        StudentConfig(target="rk4", target_space="probs").validate()
    StudentConfig(target="rk4", target_space="logits").validate()
    d = StudentConfig()
    assert (d.target, d.target_space, d.target_committed, d.carry_over) == (
        "heun",
        "probs",
        "auto",
        True,
    )
    assert resolve_committed("auto", "mask", "probs", blind_midpoints=True) == "denoiser"
    assert resolve_committed("auto", "mask", "probs", blind_midpoints=False) == "token"
    assert resolve_committed("auto", "uniform", "probs", blind_midpoints=False) == "denoiser"
    assert resolve_committed("auto", "mask", "logits", blind_midpoints=False) == "denoiser"
    assert resolve_committed("token", "mask", "probs", blind_midpoints=True) == "token"
