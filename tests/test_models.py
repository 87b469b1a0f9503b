"""Denoiser / causal LM: shapes, student zero-init equivalence, save/load, KV cache."""

import pytest
import torch

from tsdfm.errors import TsdfmError
from tsdfm.models import (
    CausalConfig,
    CausalLM,
    Denoiser,
    DenoiserConfig,
    build_student,
    load_pretrained,
)


def tiny_denoiser(time_cond: bool, **kw) -> Denoiser:
    torch.manual_seed(0)
    cfg = DenoiserConfig(
        vocab_size=11,
        num_classes=10,
        max_len=12,
        dim=32,
        n_layers=2,
        n_heads=2,
        time_cond=time_cond,
        **kw,
    )
    return Denoiser(cfg).eval()


@pytest.mark.parametrize("time_cond", [False, True])
def test_denoiser_shapes(time_cond):
    m = tiny_denoiser(time_cond)
    x = torch.randint(0, 11, (3, 12))
    out = m(x, torch.rand(3))
    assert out.shape == (3, 12, 10) and out.dtype == torch.float32


@pytest.mark.parametrize("time_cond", [False, True])
def test_student_equals_teacher_at_init(time_cond):
    teacher = tiny_denoiser(time_cond)
    with torch.no_grad():  # make the teacher's own modulations non-trivial
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = build_student(teacher, "teacher_dir").eval()
    assert student.config.dt_cond and student.config.extra["teacher"] == "teacher_dir"
    x = torch.randint(0, 11, (4, 12))
    t = torch.rand(4)
    ref = teacher(x, t)
    for dt in (1.0, 0.5, 1 / 8, 1 / 1024):
        out = student(x, t, torch.full((4,), dt))
        assert torch.equal(out, ref), dt


def test_student_dt_path_receives_gradient():
    """Zero init must not be a saddle: the dt path gets a non-zero gradient."""
    student = build_student(tiny_denoiser(False))
    x = torch.randint(0, 11, (2, 12))
    out = student(x, torch.rand(2), torch.full((2,), 0.125))
    out.logsumexp(-1).sum().backward()
    grads = [p.grad.abs().sum() for n, p in student.named_parameters() if "modulation" in n]
    assert sum(grads) > 0


def test_save_load_roundtrip(tmp_path):
    m = tiny_denoiser(True)
    d = m.save_pretrained(tmp_path / "m")
    m2, tok = load_pretrained(d)
    assert tok is None
    x = torch.randint(0, 11, (2, 12))
    t = torch.rand(2)
    assert torch.equal(m(x, t), m2(x, t))
    # re-saving over an existing directory replaces it atomically
    m.save_pretrained(tmp_path / "m")
    assert not list(tmp_path.glob(".m.*"))


def test_corrupt_weights_are_named(tmp_path):
    d = tiny_denoiser(False).save_pretrained(tmp_path / "m")
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(TsdfmError, match="model.safetensors"):
        load_pretrained(d)
    w.write_bytes(bytes(data[:100]))
    with pytest.raises(TsdfmError, match="model.safetensors"):
        load_pretrained(d, verify=False)


def test_missing_model_dir(tmp_path):
    with pytest.raises(TsdfmError, match="not found"):
        load_pretrained(tmp_path / "nope")


def test_causal_lm_is_causal_and_kv_cache_matches():
    torch.manual_seed(0)
    m = CausalLM(
        CausalConfig(vocab_size=11, num_classes=10, max_len=16, dim=32, n_layers=2, n_heads=2)
    ).eval()
    x = torch.randint(0, 10, (2, 10))
    a = m.token_nll(x)
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 10
    b = m.token_nll(x2)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)  # earlier tokens unaffected by later ones
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = m.generate(4, 16, g1, use_cache=True)
    s2 = m.generate(4, 16, g2, use_cache=False)
    assert torch.equal(s1, s2)
    e = m.energy(s1)
    assert e.shape == (4,) and torch.allclose(e, m.token_nll(s1).mean(1))
