"""Schedulers: endpoints, monotonicity, closed-form derivative, factory errors."""

import pytest
import torch

from tsdfm.errors import TsdfmError
from tsdfm.flow import CosineScheduler, PolynomialScheduler, make_scheduler

SCHEDULERS = [
    PolynomialScheduler(1.0),
    PolynomialScheduler(2.0),
    PolynomialScheduler(0.5),
    CosineScheduler(),
]


@pytest.mark.parametrize("sched", SCHEDULERS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_endpoints_and_monotone(sched, dtype):
    t = torch.linspace(0, 1, 1001, dtype=dtype)
    k = sched.kappa(t)
    assert k.dtype == dtype
    assert k[0].item() == 0.0
    assert k[-1].item() == 1.0
    assert bool((k[1:] > k[:-1]).all())


@pytest.mark.parametrize("sched", SCHEDULERS, ids=repr)
def test_derivative_matches_finite_difference(sched):
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    eps = 1e-6
    fd = (sched.kappa(t + eps) - sched.kappa(t - eps)) / (2 * eps)
    torch.testing.assert_close(sched.d_kappa(t), fd, rtol=1e-6, atol=1e-8)


def test_factory_round_trip_and_errors():
    for sched in SCHEDULERS:
        again = make_scheduler(**sched.to_dict())
        assert type(again) is type(sched) and again.to_dict() == sched.to_dict()
    with pytest.raises(TsdfmError, match="unknown scheduler"):
        make_scheduler("linear")
    with pytest.raises(TsdfmError, match="exponent"):
        make_scheduler("polynomial", exponent=0.0)


def test_python_float_input():
    assert PolynomialScheduler(2.0).kappa(0.5).item() == pytest.approx(0.25)
    assert CosineScheduler().d_kappa(0.5).item() == pytest.approx(torch.pi / 2)
