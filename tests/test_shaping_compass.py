"""Energy compasses: oracle == chain NLL, self/causal shapes and determinism, load errors."""

import pytest
import torch

from tsdfm.data.markov import MarkovChain
from tsdfm.errors import TsdfmError
from tsdfm.models import CausalConfig, CausalLM, Denoiser, DenoiserConfig
from tsdfm.shaping import CausalCompass, OracleCompass, SelfCompass, load_compass

V, L = 8, 12


def teacher(source="mask", fp="fp-a"):
    torch.manual_seed(0)
    return Denoiser(
        DenoiserConfig(
            vocab_size=V + 1,
            num_classes=V,
            max_len=L,
            dim=32,
            n_layers=1,
            n_heads=2,
            time_cond=source == "uniform",
            source=source,
            tokenizer_fingerprint=fp,
        )
    ).eval()


def causal(fp="fp-a", max_len=L):
    torch.manual_seed(1)
    return CausalLM(
        CausalConfig(V + 1, V, max_len, dim=16, n_layers=1, tokenizer_fingerprint=fp)
    ).eval()


def views(n=6, seed=0):
    return torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(seed))


def test_oracle_equals_chain_nll():
    chain = MarkovChain(V, 1, 0.2, 0.01, 0)
    seqs = torch.from_numpy(chain.sample(10, L, seed=3))
    e = OracleCompass(chain).energy(seqs)
    assert torch.equal(e, torch.from_numpy(chain.nll_per_token(seqs.numpy())))
    assert e.shape == (10,)


def test_causal_compass_is_the_lm_energy():
    lm = causal()
    x = views()
    c = CausalCompass(lm)
    e = c.energy(x)
    assert e.shape == (6,) and not e.requires_grad and c.name == "ar"
    assert torch.equal(e, c.energy(x)) and torch.equal(e, lm.energy(x))


def test_self_compass_mask_is_grouped_pseudo_likelihood():
    t = teacher("mask")
    c = SelfCompass(t, groups=2)
    x = views()
    e = c.energy(x)
    assert e.shape == (6,) and not e.requires_grad and torch.equal(e, c.energy(x))
    # brute force: each position scored with its own parity class masked
    ref = torch.zeros(6, dtype=torch.float64)
    for r in range(2):
        masked = x.clone()
        masked[:, r::2] = V
        logp = torch.log_softmax(t(masked, torch.full((6,), 0.5)), -1)
        nll = -logp.gather(-1, x.unsqueeze(-1)).squeeze(-1)
        ref += nll[:, r::2].sum(1).double()
    assert torch.allclose(e.double(), ref / L, atol=1e-5)
    assert c.t_visible == pytest.approx(0.5)  # linear kappa: kappa(t) = 1 - 1/2


def test_self_compass_uniform_one_pass():
    c = SelfCompass(teacher("uniform"), groups=4)
    x = views()
    e = c.energy(x)
    assert e.shape == (6,) and torch.equal(e, c.energy(x)) and (e > 0).all()
    assert c.t_visible == pytest.approx(0.75)


def test_self_compass_prefers_a_copy_of_what_the_teacher_knows():
    """Sanity: a sequence the teacher itself fills in greedily scores lower than random."""
    t = teacher("mask")
    c = SelfCompass(t)
    x = views(32)
    greedy = x.clone()
    for i in range(L):  # left-to-right greedy decode with the context visible
        masked = greedy.clone()
        masked[:, i] = V
        greedy[:, i] = t(masked, torch.full((32,), 0.5))[:, i].argmax(-1)
    assert c.energy(greedy).mean() < c.energy(x).mean()


def test_load_compass(tmp_path):
    t = teacher()
    chain = MarkovChain(V, 1, 0.2, 0.01, 0)
    assert isinstance(load_compass("oracle", chain=chain, teacher=t), OracleCompass)
    assert isinstance(load_compass("self", teacher=t), SelfCompass)
    causal().save_pretrained(tmp_path / "run" / "model")
    c = load_compass("ar", tmp_path / "run", teacher=t, seq_len=L)  # run dir or model dir
    assert isinstance(c, CausalCompass) and load_compass("ar", tmp_path / "run" / "model").name
    causal(fp="fp-b").save_pretrained(tmp_path / "other")
    causal(max_len=4).save_pretrained(tmp_path / "short")
    cases = [
        (dict(kind="ar"), "--compass DIR"),
        (dict(kind="ar", compass_dir=tmp_path / "nope"), "not found"),
        (dict(kind="ar", compass_dir=tmp_path / "other", teacher=t), "another tokenizer"),
        (dict(kind="ar", compass_dir=tmp_path / "short", seq_len=L), "seq_len"),
        (dict(kind="oracle", teacher=t), "markov"),
        (dict(kind="oracle", chain=MarkovChain(5, 1, 0.2, 0.01, 0), teacher=t), "symbols"),
        (dict(kind="self"), "teacher"),
        (dict(kind="energy"), "unknown compass"),
    ]
    for kw, msg in cases:
        with pytest.raises(TsdfmError, match=msg):
            load_compass(**kw)
    t.save_pretrained(tmp_path / "teacher")
    with pytest.raises(TsdfmError, match="not a 'causal'"):
        load_compass("ar", tmp_path / "teacher")
