"""Losses: cross-entropy and the mixture-path generalized KL."""

import pytest
import torch
import torch.nn.functional as F

from tsdfm.errors import TsdfmError
from tsdfm.flow import CosineScheduler, PolynomialScheduler, cross_entropy, generalized_kl

V = 6
MASK = V


def _data(seed=0, batch=3, length=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, V, generator=g)
    x1 = torch.randint(0, V, (batch, length), generator=g)
    return logits, x1, g


def test_cross_entropy_matches_torch_and_weights():
    logits, x1, g = _data()
    ref = F.cross_entropy(logits.reshape(-1, V), x1.reshape(-1))
    torch.testing.assert_close(cross_entropy(logits, x1), ref)
    w = torch.rand(x1.shape, generator=g) > 0.5
    ref_w = F.cross_entropy(logits[w], x1[w])
    torch.testing.assert_close(cross_entropy(logits, x1, w), ref_w)
    assert cross_entropy(logits.bfloat16(), x1).dtype == torch.float32
    zero = cross_entropy(logits, x1, torch.zeros_like(w))
    assert zero.item() == 0.0
    with pytest.raises(TsdfmError):
        cross_entropy(logits, x1[:, :2])


def _gkl_reference(logits, x1, x_t, t, sched):
    p = torch.softmax(logits.double(), -1)
    total = []
    for b in range(x1.shape[0]):
        k = sched.kappa(torch.tensor(float(t[b]), dtype=torch.float64))
        rate = sched.d_kappa(torch.tensor(float(t[b]), dtype=torch.float64)) / (1 - k)
        for i in range(x1.shape[1]):
            xt, y1 = int(x_t[b, i]), int(x1[b, i])
            p_xt = p[b, i, xt] if xt < V else 0.0
            same = float(xt == y1)
            total.append(-rate * (p_xt - same + (1 - same) * torch.log(p[b, i, y1])))
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in total]).mean()


@pytest.mark.parametrize("sched", [PolynomialScheduler(1.0), CosineScheduler()], ids=repr)
def test_generalized_kl_matches_formula_with_mask_ids(sched):
    logits, x1, g = _data(1, batch=4, length=6)
    x_t = torch.where(torch.rand(x1.shape, generator=g) < 0.5, x1, torch.full_like(x1, MASK))
    x_t[0, 0] = (x1[0, 0] + 1) % V  # a wrong real token too
    t = torch.tensor([0.1, 0.4, 0.7, 0.9])
    got = generalized_kl(logits, x1, x_t, t, sched)
    ref = _gkl_reference(logits, x1, x_t, t, sched)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    assert got.item() >= 0


def test_generalized_kl_zero_at_perfect_prediction_and_finite_at_t1():
    _, x1, g = _data(2)
    logits = F.one_hot(x1, V).float() * 50.0
    x_t = torch.where(torch.rand(x1.shape, generator=g) < 0.5, x1, torch.full_like(x1, MASK))
    t = torch.full((x1.shape[0],), 0.5)
    assert abs(generalized_kl(logits, x1, x_t, t, PolynomialScheduler()).item()) < 1e-5
    logits = torch.randn(x1.shape + (V,), generator=g, requires_grad=True)
    loss = generalized_kl(logits, x1, x_t, torch.ones(x1.shape[0]), PolynomialScheduler())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_generalized_kl_weights_select_positions():
    logits, x1, g = _data(3)
    x_t = torch.full_like(x1, MASK)
    t = torch.full((x1.shape[0],), 0.3)
    w = torch.zeros_like(x1, dtype=torch.bool)
    w[1, 2] = True
    full = generalized_kl(
        logits[1:2, 2:3], x1[1:2, 2:3], x_t[1:2, 2:3], t[:1], PolynomialScheduler()
    )
    torch.testing.assert_close(generalized_kl(logits, x1, x_t, t, PolynomialScheduler(), w), full)
