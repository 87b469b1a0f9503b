"""Sampler mechanics: caching, clamping, filtering, time grid, trajectory, validation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tsdfm.errors import TsdfmError
from tsdfm.flow import PolynomialScheduler, sample, sample_source

SCHED = PolynomialScheduler()


class ToyModel:
    """Deterministic, time-independent function of x (float64, so a forward on a subset of
    rows gives bit-identical logits to the full batch); counts its calls."""

    def __init__(self, vocab: int, length: int, seed: int = 0, dim: int = 8):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(vocab + 1, dim, generator=g, dtype=torch.float64)
        self.pos = torch.randn(length, dim, generator=g, dtype=torch.float64)
        self.out = torch.randn(dim, vocab, generator=g, dtype=torch.float64) * 2
        self.calls = []

    def __call__(self, x, t, dt):
        if t is not None:
            self.calls.append((x.shape[0], t.clone(), dt.clone()))
        h = self.emb[x] + self.pos[: x.shape[1]] + self.emb[x].mean(1, keepdim=True)
        return torch.tanh(h) @ self.out


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("batch", [1, 6])
def test_cache_gives_identical_ids_and_fewer_calls(batch):
    vocab, length, steps = 9, 16, 1024
    x0 = torch.full((batch, length), vocab)
    plain = sample(ToyModel(vocab, length), x0, steps, SCHED, "mask", vocab, _gen(5))
    model = ToyModel(vocab, length)
    cached = sample(model, x0, steps, SCHED, "mask", vocab, _gen(5), cache=True)
    assert torch.equal(plain.ids, cached.ids)
    assert plain.nfe_actual == plain.nfe_nominal == cached.nfe_nominal == steps
    assert cached.nfe_actual == len(model.calls)
    assert cached.nfe_actual <= batch * length + 1
    if batch == 1:
        assert cached.nfe_actual <= length + 1
    assert any(n < batch for n, _, _ in model.calls[1:]) or batch == 1
    assert not bool((cached.ids == vocab).any())


@pytest.mark.parametrize("filters", [{"temperature": 0.7}, {"top_k": 3, "top_p": 0.9}])
def test_cache_with_filters_gives_identical_ids_filtering_once_per_forward(filters, monkeypatch):
    """The cache holds filtered logits: the same draws as filtering every step, but the
    filter runs once per forward, not once per step over the whole ``[B, L, V]`` cache."""
    import tsdfm.flow.sampler as sampler_module

    vocab, length, steps = 9, 16, 256
    x0 = torch.full((4, length), vocab)
    plain = sample(ToyModel(vocab, length), x0, steps, SCHED, "mask", vocab, _gen(5), **filters)
    unfiltered = sample(ToyModel(vocab, length), x0, steps, SCHED, "mask", vocab, _gen(5))
    assert not torch.equal(plain.ids, unfiltered.ids)  # the filters act on these draws
    calls = []
    real = sampler_module.filter_logits
    monkeypatch.setattr(
        sampler_module, "filter_logits", lambda lg, *a: calls.append(lg.shape[0]) or real(lg, *a)
    )
    cached = sample(
        ToyModel(vocab, length), x0, steps, SCHED, "mask", vocab, _gen(5), cache=True, **filters
    )
    assert torch.equal(plain.ids, cached.ids)
    assert len(calls) == cached.nfe_actual + 1 < steps  # + the up-front validation call


def test_cache_rejected_for_uniform_source():
    x0 = sample_source((2, 3), "uniform", 4, 4, _gen())
    with pytest.raises(TsdfmError, match="cache=True is only valid for the mask source"):
        sample(ToyModel(4, 3), x0, 4, SCHED, "uniform", 4, _gen(), cache=True)


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_clamp_keeps_x0_tokens(source):
    vocab, length = 7, 10
    x0 = sample_source((5, length), source, vocab, vocab, _gen(1))
    clamp = torch.zeros(5, length, dtype=torch.bool)
    clamp[:, :4] = True
    x0[:, :4] = torch.arange(4)
    res = sample(ToyModel(vocab, length), x0, 3, SCHED, source, vocab, _gen(2), clamp=clamp)
    assert torch.equal(res.ids[:, :4], x0[:, :4])
    assert int(res.ids.max()) < vocab
    bad = x0.clone()
    bad[0, 0] = vocab
    with pytest.raises(TsdfmError, match="clamped positions hold"):
        sample(ToyModel(vocab, length), bad, 3, SCHED, source, vocab, _gen(), clamp=clamp)
    with pytest.raises(TsdfmError, match="clamp must have the shape"):
        sample(ToyModel(vocab, length), x0, 3, SCHED, source, vocab, _gen(), clamp=clamp[:, :3])


def test_top_k_one_is_greedy_on_filtered_logits_and_no_mask_ids():
    vocab, length = 6, 8
    model = ToyModel(vocab, length)
    x0 = torch.full((4, length), vocab)
    res = sample(model, x0, 1, SCHED, "mask", vocab, _gen(3), top_k=1)
    assert torch.equal(res.ids, model(x0, None, None).argmax(-1))
    res = sample(model, x0, 5, SCHED, "mask", vocab, _gen(3), top_p=0.5)
    assert not bool((res.ids == vocab).any())


def test_model_receives_t_and_dt_and_trajectory():
    vocab, length, steps = 5, 3, 4
    model = ToyModel(vocab, length)
    x0 = torch.full((2, length), vocab)
    res = sample(model, x0, steps, SCHED, "mask", vocab, _gen(), record_trajectory=True)
    ts = [c[1][0].item() for c in model.calls]
    assert ts == [0.0, 0.25, 0.5, 0.75]
    assert all(c[2].dtype == torch.float32 and torch.all(c[2] == 0.25) for c in model.calls)
    assert len(res.trajectory) == steps + 1
    assert torch.equal(res.trajectory[0], x0) and torch.equal(res.trajectory[-1], res.ids)
    model.calls.clear()
    sample(model, x0, 2, SCHED, "mask", vocab, _gen(), time_grid=[0.0, 0.8, 1.0])
    assert [c[1][0].item() for c in model.calls] == pytest.approx([0.0, 0.8])
    assert [c[2][0].item() for c in model.calls] == pytest.approx([0.8, 0.2])
    model.calls.clear()
    sample(model, x0, 2, SCHED, "mask", vocab, _gen(), dt_for_model=0.125)
    assert all(torch.all(c[2] == 0.125) for c in model.calls)
    with pytest.raises(TsdfmError, match="time_grid"):
        sample(model, x0, 2, SCHED, "mask", vocab, _gen(), time_grid=[0.0, 1.0])
    with pytest.raises(TsdfmError, match="time_grid"):
        sample(model, x0, 2, SCHED, "mask", vocab, _gen(), time_grid=[0.0, 0.6, 0.5])


def test_same_seed_same_samples_and_logit_shape_check():
    vocab, length = 5, 6
    x0 = torch.full((3, length), vocab)
    a = sample(ToyModel(vocab, length), x0, 7, SCHED, "mask", vocab, _gen(9)).ids
    b = sample(ToyModel(vocab, length), x0, 7, SCHED, "mask", vocab, _gen(9)).ids
    assert torch.equal(a, b)
    with pytest.raises(TsdfmError, match="num_classes must equal mask_id"):
        sample(
            lambda x, t, dt: torch.zeros(*x.shape, vocab),
            torch.full((3, length), vocab + 1),
            2,
            SCHED,
            "mask",
            vocab + 1,
            _gen(),
        )
    with pytest.raises(TsdfmError, match="x0 must be"):
        sample(
            ToyModel(vocab, length),
            torch.zeros(length, dtype=torch.long),
            2,
            SCHED,
            "mask",
            vocab,
            _gen(),
        )


@settings(max_examples=25, deadline=None)
@given(steps=st.integers(min_value=-5, max_value=0))
def test_invalid_steps_raise(steps):
    with pytest.raises(TsdfmError, match="steps must be >= 1"):
        sample(ToyModel(3, 2), torch.full((1, 2), 3), steps, SCHED, "mask", 3, _gen())


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 4),
    length=st.integers(1, 6),
    vocab=st.integers(1, 6),
    steps=st.integers(1, 5),
    source=st.sampled_from(["mask", "uniform"]),
    cache=st.booleans(),
    jump_rule=st.sampled_from(["exact", "first_jump"]),
    seed=st.integers(0, 2**16),
)
def test_random_valid_shapes(batch, length, vocab, steps, source, cache, jump_rule, seed):
    cache = cache and source == "mask"
    x0 = sample_source((batch, length), source, vocab, vocab, _gen(seed))
    res = sample(
        ToyModel(vocab, length, seed),
        x0,
        steps,
        SCHED,
        source,
        vocab,
        _gen(seed),
        cache=cache,
        jump_rule=jump_rule,
    )
    assert res.ids.shape == x0.shape and res.ids.dtype == torch.long
    assert int(res.ids.min()) >= 0 and int(res.ids.max()) < vocab
    assert 1 <= res.nfe_actual <= res.nfe_nominal == steps
    assert res.seconds >= 0
