"""The head at switching positions only: the model computes the same logits there, and the
sampler / server draw exactly the samples of the full-head path (same random stream)."""

from __future__ import annotations

import pytest
import torch

from tsdfm.flow import make_scheduler, sample, sample_source
from tsdfm.models import Denoiser, DenoiserConfig, build_student

V, L = 11, 10


def _model(source: str = "mask", student: bool = True, seed: int = 0, chain: str = ""):
    """A small denoiser; ``chain``: a chain student (3 codes) whose codes matter, its
    transitions reading ``chain`` features (``last`` / ``penultimate`` / ``changeable``)."""
    torch.manual_seed(seed)
    cfg = DenoiserConfig(
        vocab_size=V + 1, num_classes=V, max_len=L, dim=32, n_layers=2, n_heads=2,
        time_cond=source == "uniform", source=source,
    )  # fmt: skip
    m = Denoiser(cfg)
    if student:
        kw = dict(latent_codes=3, latent_chain=True, chain_features=chain) if chain else {}
        m = build_student(m, **kw)
    with torch.no_grad():  # move the zero-initialised conditioning so that t and dt matter
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if chain:  # codes far apart, transitions that depend on the features
            m.chain.shift.normal_(0, 2.0)
            m.chain.unary.weight.normal_(0, 0.5)
    return m.eval()


@pytest.mark.parametrize(
    "source,student,chain",
    [
        ("mask", True, ""),
        ("uniform", True, ""),
        ("mask", False, ""),
        ("uniform", False, ""),
        ("mask", True, "last"),
        ("uniform", True, "last"),
        ("mask", True, "penultimate"),
        ("uniform", True, "penultimate"),
        ("mask", True, "changeable"),
        ("uniform", True, "changeable"),
    ],
)
def test_forward_at_positions_equals_the_full_forward_there(source, student, chain):
    """Students (adaLN from dt), a time-conditioned teacher, an unconditioned one, and chain
    students (their codes drawn along the whole row from the same noise)."""
    m = _model(source, student, chain=chain)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V + 1, (6, L), generator=g)
    x[4] = x[1]  # a repeated row (computed once) ...
    x[5] = V  # ... and an all-[MASK] row
    t = torch.tensor([0.1, 0.3, 0.3, 0.5, 0.3, 0.9])
    dt = torch.full((6,), 0.125)
    pos = torch.rand(6, L, generator=g) < 0.4
    pos[2] = False  # a row with nothing to compute
    z = (torch.rand(6, L, generator=g),) if chain else ()
    with torch.no_grad():
        full, at = m(x, t, dt, *z), m(x, t, dt, *z, positions=pos)
    assert at.shape == (int(pos.sum()), V)
    torch.testing.assert_close(at, full[pos], rtol=1e-5, atol=1e-5)
    if chain:  # the codes matter: other noise, other logits at the same positions
        with torch.no_grad():
            other = m(x, t, dt, torch.rand(6, L, generator=g), positions=pos)
        assert not torch.allclose(at, other, atol=1e-3)
        return
    # rows 1 and 4 share ids and t, so they are one row of the body: equal logits there
    both = pos[1] & pos[4]
    if both.any():
        k1 = pos[:1].sum() + pos[1].cumsum(0)[both] - 1
        k4 = pos[:4].sum() + pos[4].cumsum(0)[both] - 1
        assert torch.equal(at[k1], at[k4])
    with torch.no_grad():  # nothing selected: no logits, no error
        assert m(x, t, dt, positions=torch.zeros_like(pos)).shape == (0, V)
    with pytest.raises(ValueError, match="bool mask"):
        m(x, t, dt, positions=pos.long())


def test_changeable_chain_features_are_the_last_on_the_uniform_source():
    """Every position of the uniform source can change, so ``changeable`` reads the head's
    features everywhere: the same weights give ``last``'s logits, on the full and the
    positions= paths (and the mask source's differ, the check that could fail)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, V + 1, (4, L), generator=g)
    t, dt, u = torch.rand(4, generator=g), torch.full((4,), 0.25), torch.rand(4, L, generator=g)
    pos = torch.rand(4, L, generator=g) < 0.5
    out = {}
    for source in ("uniform", "mask"):
        for chain in ("last", "changeable"):
            m = _model(source, chain=chain)
            with torch.no_grad():
                out[source, chain] = (m(x, t, dt, u), m(x, t, dt, u, positions=pos))
    for a, b in zip(out["uniform", "last"], out["uniform", "changeable"], strict=True):
        assert torch.equal(a, b)
    assert not torch.allclose(out["mask", "last"][0], out["mask", "changeable"][0], atol=1e-4)


def _draw(model, source, head_at_jumps, clamp=None, seed=3, batch=5, steps=6, **kw):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    x0 = sample_source((batch, L), source, c.mask_id, c.num_classes, g, "cpu")
    if clamp is not None:
        x0 = torch.where(clamp, torch.full_like(x0, 2), x0)
    sched = make_scheduler(c.scheduler, c.exponent)
    return sample(
        model, x0, steps, sched, source, c.mask_id, g, clamp=clamp, head_at_jumps=head_at_jumps,
        record_trajectory=True, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("chain", ["", "last", "penultimate", "changeable"])
@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize(
    "filters", [{}, {"temperature": 0.7, "top_p": 0.8}, {"top_k": 3, "temperature": 1.5}]
)
def test_sampler_draws_the_same_samples_as_the_full_head(source, filters, chain):
    """Same seed, same trajectory: the switches are drawn first from the same uniforms, the
    landings from the same Gumbel noise, with logits computed only where they are used (a
    chain student's noise drawn first on both paths)."""
    m = _model(source, chain=chain)
    clamp = torch.zeros(5, L, dtype=torch.bool)
    clamp[:, :3] = True  # a prompt
    clamp[4] = True  # a row with nothing to generate: skipped by the head-at-jumps path
    old = _draw(m, source, False, clamp, **filters)
    new = _draw(m, source, True, clamp, **filters)
    for a, b in zip(old.trajectory, new.trajectory, strict=True):
        assert torch.equal(a, b)
    assert new.nfe_per_sample <= 4 / 5 * old.nfe_per_sample  # the clamped row never ran
    assert bool((new.ids[:, :3] == 2).all())


def test_a_model_without_positions_gets_the_full_call():
    """Plain callables (and the forward cache) keep the full [B, L, V] call per step."""
    m = _model("mask")
    calls = []

    def fn(x, t, dt):
        calls.append(x.shape[0])
        return m(x, t, dt)

    c = m.config
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((3, L), c.mask_id)
    res = sample(fn, x0, 4, make_scheduler("polynomial", 1.0), "mask", c.mask_id, g)
    assert calls == [3, 3, 3, 3] and res.nfe_actual == 4
    assert torch.equal(res.ids, _draw(m, "mask", True, seed=0, batch=3, steps=4).ids)


def test_precision_benchmark_compares_the_full_head(tmp_path):
    """benchmarks/sample_precision.py --compare full-head: same seed, same tokens."""
    import importlib.util
    from pathlib import Path

    from tsdfm.data.tokenizer import Tokenizer

    _model("mask").save_pretrained(tmp_path / "m", tokenizer=Tokenizer.identity(V))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "sample_precision.py"
    spec = importlib.util.spec_from_file_location("sample_precision_bench", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["--model", str(tmp_path / "m"), "--steps", "4", "--num", "6", "--batch-size", "3"]
    report = mod.main([*argv, "--compare", "full-head", "--out", str(tmp_path / "out")])
    assert report["identical_tokens_at-jumps_vs_full-head"] == 1.0
    assert report["identical_tokens_at-jumps_seed_vs_seed+1"] < 1.0
    assert (tmp_path / "out" / "full-head.jsonl").is_file()


@pytest.mark.parametrize(
    "chain,source",
    [("", "uniform"), ("last", "uniform"), ("penultimate", "uniform"), ("changeable", "mask")],
)
def test_cpu_row_chunks_give_the_same_logits(monkeypatch, chain, source):
    """The CPU body runs over row chunks; chunk borders (and repeated rows that straddle them)
    change nothing but the rounding of a smaller matmul (a chain student's codes are drawn
    after the chunks, over the whole batch)."""
    import tsdfm.models.denoiser as denoiser

    m = _model(source, chain=chain)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, V + 1, (7, L), generator=g)
    x[6] = x[0]
    t, dt = torch.full((7,), 0.25), torch.full((7,), 0.5)
    pos = torch.rand(7, L, generator=g) < 0.5
    pos[3] = False  # a chunk may have nothing to compute
    z = (torch.rand(7, L, generator=g),) if chain else ()
    with torch.no_grad():
        whole = m(x, t, dt, *z, positions=pos)
        monkeypatch.setattr(denoiser, "CPU_CHUNK_POSITIONS", L)  # one row per chunk
        chunked = m(x, t, dt, *z, positions=pos)
        full = m(x, t, dt, *z)[pos]
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_runs_the_positions_path():
    m = _model("mask")
    x = torch.full((3, L), V)
    t, dt = torch.zeros(3), torch.full((3,), 0.25)
    pos = torch.zeros(3, L, dtype=torch.bool)
    pos[0, 2] = pos[2, 5] = True
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        at = m(x, t, dt, positions=pos)
        full = m(x, t, dt)
    assert at.dtype == torch.float32 and at.shape == (2, V)
    torch.testing.assert_close(at, full[pos], rtol=0.05, atol=0.05)
