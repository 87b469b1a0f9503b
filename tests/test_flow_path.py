"""Mixture path: sources, marginals of x_t, training times."""

import math

import pytest
import torch

from tsdfm.errors import TsdfmError
from tsdfm.flow import (
    CosineScheduler,
    PolynomialScheduler,
    changeable_positions,
    sample_path,
    sample_source,
    sample_time,
)

V = 7
MASK = V


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_sources():
    x = sample_source((3, 5), "mask", MASK, V, _gen())
    assert x.dtype == torch.long and bool((x == MASK).all())
    u = sample_source((2000, 8), "uniform", MASK, V, _gen())
    assert int(u.min()) == 0 and int(u.max()) == V - 1
    counts = torch.bincount(u.flatten(), minlength=V).double() / u.numel()
    se = math.sqrt((1 / V) * (1 - 1 / V) / u.numel())
    assert (counts - 1 / V).abs().max().item() < 5 * se
    with pytest.raises(TsdfmError, match="unknown source"):
        sample_source((1, 1), "gaussian", MASK, V, _gen())


@pytest.mark.parametrize(
    "sched", [PolynomialScheduler(1.0), PolynomialScheduler(2.0), CosineScheduler()], ids=repr
)
@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_path_marginals(sched, source):
    batch, length = 400, 50
    times = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.8, 0.99, 1.0])
    g = _gen(1)
    x1 = torch.randint(0, V, (batch * len(times), length), generator=g)
    t = times.repeat_interleave(batch)
    xt = sample_path(x1, t, sched, source, MASK, V, g)
    assert xt.shape == x1.shape and xt.dtype == torch.long
    for i, tv in enumerate(times):
        rows = slice(i * batch, (i + 1) * batch)
        frac = (xt[rows] == x1[rows]).double().mean().item()
        k = sched.kappa(tv.double()).item()
        expected = k if source == "mask" else k + (1 - k) / V
        se = math.sqrt(expected * (1 - expected) / (batch * length))
        assert abs(frac - expected) <= 5 * se + 1e-12, (tv, frac, expected)
        if source == "mask":
            off = xt[rows] != x1[rows]
            assert bool((xt[rows][off] == MASK).all())
        else:
            assert int(xt[rows].max()) < V


def test_path_is_reproducible_and_validates():
    x1 = torch.randint(0, V, (4, 6), generator=_gen())
    t = torch.full((4,), 0.5)
    a = sample_path(x1, t, PolynomialScheduler(), "uniform", MASK, V, _gen(3))
    b = sample_path(x1, t, PolynomialScheduler(), "uniform", MASK, V, _gen(3))
    assert torch.equal(a, b)
    with pytest.raises(TsdfmError, match="t must have shape"):
        sample_path(x1, torch.zeros(3), PolynomialScheduler(), "mask", MASK, V, _gen())


def test_sample_time():
    t = sample_time(10000, _gen(), t_max=1.0, eps=1e-3)
    assert t.dtype == torch.float32 and t.shape == (10000,)
    assert float(t.min()) >= 0.0 and float(t.max()) < 1.0 - 1e-3
    assert abs(t.double().mean().item() - 0.4995) < 0.02
    assert torch.equal(t, sample_time(10000, _gen(), t_max=1.0, eps=1e-3))
    with pytest.raises(TsdfmError):
        sample_time(3, _gen(), t_max=0.001, eps=0.001)


def test_changeable_positions_are_the_masked_ones_or_all():
    x = torch.tensor([[0, 5, 2], [5, 5, 1]])
    assert changeable_positions(x, "mask", 5).tolist() == [
        [False, True, False],
        [True, True, False],
    ]
    assert bool(changeable_positions(x, "uniform", 5).all())
