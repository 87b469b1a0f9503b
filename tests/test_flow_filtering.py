"""Top-k / nucleus filtering of denoiser logits."""

import pytest
import torch

from tsdfm.errors import TsdfmError
from tsdfm.flow import filter_logits


def _logits(seed=0, shape=(4, 7, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("k", [1, 3, 11, 50])
def test_top_k_keeps_exactly_k(k):
    logits = _logits()
    out = filter_logits(logits, top_k=k)
    kept = torch.isfinite(out)
    assert bool((kept.sum(-1) == min(k, 11)).all())
    # the kept ones are the k largest, unchanged
    assert torch.equal(out[kept], logits[kept])
    kth = torch.topk(logits, min(k, 11), dim=-1).values[..., -1:]
    assert bool((logits[kept.logical_not()] < kth.expand_as(logits)[kept.logical_not()]).all())


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_top_p_keeps_minimal_nucleus(p):
    logits = _logits(1)
    out = filter_logits(logits, top_p=p)
    probs = torch.softmax(logits.double(), -1)
    kept = torch.isfinite(out)
    for row_p, row_k in zip(probs.reshape(-1, 11), kept.reshape(-1, 11), strict=True):
        mass = row_p[row_k].sum().item()
        assert mass >= p - 1e-12
        assert row_k[row_p.argmax()]
        # minimal: dropping the least likely kept class falls below p, and every kept
        # class is at least as likely as every dropped one
        assert mass - row_p[row_k].min().item() < p
        if (~row_k).any():
            assert row_p[row_k].min() >= row_p[~row_k].max()


def test_top_p_tiny_keeps_top_token_and_none_is_identity():
    logits = _logits(2)
    out = filter_logits(logits, top_p=1e-9)
    assert bool((torch.isfinite(out).sum(-1) == 1).all())
    assert filter_logits(logits) is logits
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)


def test_combined_and_validation():
    logits = _logits(3)
    out = filter_logits(logits, top_k=4, top_p=0.99)
    assert bool((torch.isfinite(out).sum(-1) <= 4).all())
    for bad in ({"top_k": 0}, {"top_k": 1.5}, {"top_p": 0.0}, {"top_p": 1.2}):
        with pytest.raises(TsdfmError):
            filter_logits(logits, **bad)


def test_temperature_divides_the_logits_before_truncation():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.equal(filter_logits(logits, temperature=1.0), logits)
    torch.testing.assert_close(filter_logits(logits, temperature=0.5), 2 * logits)
    # sharper first, so the nucleus of the sharpened distribution is smaller
    p = 0.8
    wide, narrow = filter_logits(logits, top_p=p), filter_logits(logits, top_p=p, temperature=0.3)
    assert int(torch.isfinite(narrow).sum()) < int(torch.isfinite(wide).sum())
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(TsdfmError, match="temperature"):
            filter_logits(logits, temperature=bad)
