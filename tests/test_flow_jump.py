"""One jump: switch probability q(t, h), mask-source invariants, per-row t/h, rules."""

import math

import pytest
import torch

from tsdfm.errors import TsdfmError
from tsdfm.flow import CosineScheduler, PolynomialScheduler, jump, switch_probability

V = 5
MASK = V


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_switch_probability_formula_and_end():
    sched = PolynomialScheduler(2.0)
    q = switch_probability(0.3, 0.2, sched)
    assert q.item() == pytest.approx((0.25 - 0.09) / (1 - 0.09))
    # equals 1 - exp(-h * alpha) with FS-DFM's alpha = ln[(1-k(t)) / (1-k(t+h))] / h
    alpha = math.log((1 - 0.09) / (1 - 0.25)) / 0.2
    assert q.item() == pytest.approx(1 - math.exp(-0.2 * alpha))
    for sched in (PolynomialScheduler(1.0), CosineScheduler()):
        assert switch_probability(0.0, 1.0, sched).item() == 1.0
        assert switch_probability(1.0 - 1 / 3, 1 / 3, sched).item() == 1.0
        assert switch_probability(0.99999994, 0.0, sched).item() == 0.0
        assert switch_probability(1.0, 0.0, sched).item() == 0.0
    rows = switch_probability(torch.tensor([0.0, 0.5]), torch.tensor([0.5, 0.5]), sched)
    assert rows.shape == (2,) and rows[1].item() == 1.0


@pytest.mark.parametrize("sched", [PolynomialScheduler(1.0), CosineScheduler()], ids=repr)
@pytest.mark.parametrize("t,h", [(0.0, 0.1), (0.25, 0.5), (0.7, 0.05), (0.9, 0.1)])
def test_mask_unmask_fraction_equals_q(sched, t, h):
    batch, length = 500, 40
    x = torch.full((batch, length), MASK)
    logits = torch.randn(batch, length, V, generator=_gen(1))
    new = jump(x, logits, t, h, sched, "mask", MASK, _gen(2))
    q = (
        (
            sched.kappa(torch.tensor(t + h, dtype=torch.float64))
            - sched.kappa(torch.tensor(t, dtype=torch.float64))
        )
        / (1 - sched.kappa(torch.tensor(t, dtype=torch.float64)))
    ).item()
    frac = (new != MASK).double().mean().item()
    se = math.sqrt(max(q * (1 - q), 1e-12) / x.numel())
    assert abs(frac - q) <= 5 * se + 1e-12, (frac, q)
    assert int(new[new != MASK].max()) < V


def test_unmasked_positions_never_change_even_if_model_disagrees():
    g = _gen(3)
    x = torch.randint(0, V, (64, 16), generator=g)
    x[:, ::2] = MASK
    logits = torch.full((64, 16, V), -30.0)
    logits[..., 0] = 30.0  # all mass on class 0
    x[:, 1::2] = torch.randint(1, V, (64, 8), generator=g)
    for rule in ("exact", "first_jump"):
        new = jump(x, logits, 0.5, 0.5, PolynomialScheduler(), "mask", MASK, _gen(4), rule)
        assert torch.equal(new[:, 1::2], x[:, 1::2])
        assert bool((new[:, ::2] == 0).all())  # q = 1 at the end: every mask lands on class 0


def test_per_row_t_and_h():
    batch, length = 3, 4000
    x = torch.full((batch, length), MASK)
    logits = torch.zeros(batch, length, V)
    t = torch.tensor([0.0, 0.5, 0.2])
    h = torch.tensor([0.1, 0.5, 0.0])
    new = jump(x, logits, t, h, PolynomialScheduler(), "mask", MASK, _gen(5))
    frac = (new != MASK).double().mean(1)
    assert abs(frac[0].item() - 0.1) < 5 * math.sqrt(0.09 / length)
    assert frac[1].item() == 1.0 and frac[2].item() == 0.0


def test_clamp_and_rng_use_independent_of_model_output():
    """Clamped positions never move, and the random stream consumed by a jump does not depend
    on the logits (only on which positions switch), so forward caching cannot change it."""
    g = _gen(6)
    x = torch.randint(0, V, (8, 10), generator=g)
    clamp = torch.zeros_like(x, dtype=torch.bool)
    clamp[:, :3] = True
    for rule in ("exact", "first_jump"):
        states = []
        for seed in (1, 2):
            logits = torch.randn(8, 10, V, generator=_gen(seed))
            gen = _gen(7)
            new = jump(
                x, logits, 0.0, 0.5, PolynomialScheduler(), "uniform", MASK, gen, rule, clamp
            )
            assert torch.equal(new[:, :3], x[:, :3])
            states.append(gen.get_state())
        if rule == "exact":
            assert torch.equal(states[0], states[1])


def test_first_jump_always_leaves_at_full_step_exact_may_stay():
    x = torch.zeros(2000, 1, dtype=torch.long)
    logits = torch.zeros(2000, 1, V)  # uniform p: p(x) = 1/V
    fj = jump(x, logits, 0.0, 1.0, PolynomialScheduler(), "uniform", MASK, _gen(8), "first_jump")
    assert bool((fj != 0).all())
    ex = jump(x, logits, 0.0, 1.0, PolynomialScheduler(), "uniform", MASK, _gen(8), "exact")
    stay = (ex == 0).double().mean().item()
    assert abs(stay - 1 / V) < 5 * math.sqrt(0.16 / 2000)


def test_jump_validation():
    x = torch.full((2, 3), MASK)
    with pytest.raises(TsdfmError, match="jump_rule"):
        jump(
            x, torch.zeros(2, 3, V), 0.0, 0.5, PolynomialScheduler(), "mask", MASK, _gen(), "euler"
        )
    with pytest.raises(TsdfmError, match="logits"):
        jump(x, torch.zeros(2, 4, V), 0.0, 0.5, PolynomialScheduler(), "mask", MASK, _gen())
    with pytest.raises(TsdfmError, match="clamp"):
        jump(
            x,
            torch.zeros(2, 3, V),
            0.0,
            0.5,
            PolynomialScheduler(),
            "mask",
            MASK,
            _gen(),
            clamp=torch.zeros(2, 2, dtype=torch.bool),
        )
