"""Midpoints (``student.midpoint``): the joint posterior draw, the exact jumps, the teacher's.

The claim the diagnostic rests on: ``exact-joint`` and ``exact-marginal`` midpoints have the
same per-position law and differ only in the correlations between positions, and the joint one
is the true law of ``x_{t+h}`` given ``x_t``. Both are checked against brute-force enumeration
of a 3-symbol chain over 4 positions.
"""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_shortcut import tiny_teacher  # V = 8 symbols + [MASK], L = 12

from tsdfm.config import ExperimentConfig, StudentConfig
from tsdfm.data.markov import MarkovChain
from tsdfm.errors import TsdfmError
from tsdfm.flow import make_scheduler, switch_probability
from tsdfm.models.oracle import MarkovOracleDenoiser, MarkovUniformOracleDenoiser
from tsdfm.shaping import blind_jump, midpoint_jump
from tsdfm.training import student as student_mod
from tsdfm.training.objectives import ShortcutObjective

V, L, N = 3, 4, 40_000
SCHED = make_scheduler("polynomial")  # kappa(t) = t


def _chain():
    return MarkovChain(vocab_size=V, order=1, alpha=0.4, eps=0.05, seed=2)


def _emission(x, source, kappa):
    if source == "mask":
        return lambda i, v: 1.0 if x[i] == V else float(x[i] == v)
    return lambda i, v: kappa * (x[i] == v) + (1 - kappa) / V


def brute_clean_posterior(chain, x, source, kappa):
    """{x_1: p(x_1 | x_t)} over all V^L sequences."""
    e = _emission(x, source, kappa)
    law = {}
    for seq in itertools.product(range(V), repeat=L):
        p = float(np.exp(chain.log_prob(np.array([seq]))[0]))
        for i, v in enumerate(seq):
            p *= e(i, v)
        law[seq] = p
    z = sum(law.values())
    return {s: p / z for s, p in law.items()}


def brute_midpoint_law(chain, x, source, kappa, q):
    """{x_{t+h}: p(x_{t+h} | x_t)}: a clean draw, then independent switches with probability q."""
    law = {}
    movable = [(x[i] == V) if source == "mask" else True for i in range(L)]
    for x1, p1 in brute_clean_posterior(chain, x, source, kappa).items():
        for switch in itertools.product([0, 1], repeat=L):
            if any(s and not m for s, m in zip(switch, movable, strict=True)):
                continue
            ps = np.prod(
                [(q if s else 1 - q) if m else 1.0 for s, m in zip(switch, movable, strict=True)]
            )
            y = tuple(x1[i] if switch[i] else x[i] for i in range(L))
            law[y] = law.get(y, 0.0) + p1 * ps
    return law


def empirical(rows):
    law = {}
    for r in map(tuple, rows.tolist()):
        law[r] = law.get(r, 0.0) + 1.0 / len(rows)
    return law


def tv(a, b):
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def _oracle(chain, source):
    if source == "mask":
        return MarkovOracleDenoiser(chain, L)
    return MarkovUniformOracleDenoiser(chain, L, SCHED)


CASES = [("mask", [V, 1, V, V]), ("mask", [V, V, V, V]), ("uniform", [0, 2, 2, 1])]


@pytest.mark.parametrize("source,x", CASES)
def test_clean_draw_is_the_joint_posterior(source, x):
    chain, t = _chain(), 0.4
    oracle = _oracle(chain, source)
    xs = torch.tensor([x]).repeat(N, 1)
    draws = oracle.sample_clean(xs, torch.full((N,), t), generator=torch.Generator().manual_seed(0))
    want = brute_clean_posterior(chain, x, source, kappa=t)
    # N = 40,000 draws of an 81-outcome law: sampling TV is ~0.02; a factorised draw is far off
    assert tv(empirical(draws), want) < 0.03
    if source == "mask":
        visible = torch.tensor(x) != V
        assert bool((draws[:, visible] == torch.tensor(x)[visible]).all())


@pytest.mark.parametrize("source,x", CASES)
def test_joint_jump_is_the_true_midpoint_law_and_marginal_jump_is_not(source, x):
    chain, t, h = _chain(), 0.4, 0.5  # q = 0.83: most positions move, together
    oracle, mask_id = _oracle(chain, source), V
    xs, tt, hh = torch.tensor([x]).repeat(N, 1), torch.full((N,), t), torch.full((N,), h)
    logits = torch.zeros(N, L, V)  # the network's prediction: ignored by both exact jumps
    q = float(switch_probability(t, h, SCHED))
    want = brute_midpoint_law(chain, x, source, kappa=t, q=q)
    joint = midpoint_jump(oracle, SCHED, source, mask_id, "exact-joint")
    marg = midpoint_jump(oracle, SCHED, source, mask_id, "exact-marginal")
    yj = joint(xs, logits, tt, hh, torch.Generator().manual_seed(1))
    ym = marg(xs, logits, tt, hh, torch.Generator().manual_seed(2))
    assert tv(empirical(yj), want) < 0.03
    # same per-position law: (1 - q)[v = x_t] + q p(x_1^i = v | x_t); with the mask source a
    # masked position that does not switch stays [MASK] (not counted) and visible ones stay put
    post = oracle(xs[:1], tt[:1]).double().exp()[0]
    stay = torch.nn.functional.one_hot(torch.tensor(x).clamp(max=V - 1), V).double()
    masked = (torch.tensor(x) == V)[:, None]
    if source == "mask":
        per_pos = torch.where(masked, q * post, stay)
    else:
        per_pos = (1 - q) * stay + q * post
    movable = masked if source == "mask" else torch.ones_like(masked)
    for y in (yj, ym):
        freq = torch.stack([(y == v).double().mean(0) for v in range(V)], -1)
        torch.testing.assert_close(freq, per_pos, atol=0.015, rtol=0)
    # ... but the marginal jump is the product of those laws, not the joint one
    if sum(movable.view(-1).tolist()) > 1:
        assert tv(empirical(ym), want) > 0.05


def test_shortcut_targets_run_with_exact_midpoints():
    chain = MarkovChain(vocab_size=8, order=1, alpha=0.3, eps=0.02, seed=3)
    teacher = tiny_teacher("uniform")
    oracle = MarkovUniformOracleDenoiser(chain, 12, SCHED)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8, (6, 12), generator=gen)
    t, dt = torch.full((6,), 0.25), torch.full((6,), 0.25)
    targets = []
    for kind in ("exact-marginal", "exact-joint"):
        jump_fn = midpoint_jump(oracle, SCHED, "uniform", 8, kind)
        obj = ShortcutObjective(teacher, StudentConfig(teacher_steps=16), 8, 8, jump_fn=jump_fn)
        assert obj.to(torch.device("cpu")) is obj
        target, anchor = obj.targets(x, t, dt, torch.Generator().manual_seed(5))
        assert not anchor.any() and torch.isfinite(target).all()
        torch.testing.assert_close(target.exp().sum(-1), torch.ones(6, 12))
        targets.append(target)
    assert not torch.allclose(*targets)  # the two laws differ, so do the targets


def test_midpoint_option_is_validated_and_refused_where_it_means_nothing(monkeypatch):
    with pytest.raises(TsdfmError, match="midpoint must be one of"):
        StudentConfig(midpoint="exact").validate()
    with pytest.raises(TsdfmError, match="unknown midpoint kind"):
        midpoint_jump(None, SCHED, "mask", 8, "model")
    with pytest.raises(TsdfmError, match="exact denoiser"):
        midpoint_jump(tiny_teacher(), SCHED, "mask", 8, "exact-joint")
    cfg = ExperimentConfig()
    cfg.student.midpoint = "exact-joint"
    with pytest.raises(TsdfmError, match="cannot also be navigated"):
        student_mod.shaping_setup(cfg, "runs/x/teacher/model", "runs/x/data", navigate=True)
    text = SimpleNamespace(chain=lambda: None, directory="runs/x/data", seq_len=12)
    monkeypatch.setattr(student_mod, "load_prepared", lambda *a, **k: text)
    monkeypatch.setattr(student_mod, "load_teacher", lambda *a, **k: tiny_teacher())
    with pytest.raises(TsdfmError, match="needs the markov corpus"):
        student_mod.shaping_setup(cfg, "runs/x/teacher/model", "runs/x/data", navigate=False)
    cfg.student.midpoint = "teacher"  # the teacher's posterior exists on any corpus
    jump_fn, _, extra, name = student_mod.shaping_setup(cfg, "t", "d", navigate=False)
    assert extra == {"midpoint": "teacher"} and name == "student-midpoint-teacher"
    assert jump_fn.midpoint == "teacher" and jump_fn.oracle.config.source == "mask"
    cfg.student.midpoint = "exact-joint"
    chain = MarkovChain(vocab_size=8, order=1, alpha=0.3, eps=0.02, seed=0)
    markov = SimpleNamespace(chain=lambda: chain, directory="runs/m/data", seq_len=12)
    monkeypatch.setattr(student_mod, "load_prepared", lambda *a, **k: markov)
    jump_fn, method, extra, name = student_mod.shaping_setup(
        cfg, "runs/m/teacher/model", "runs/m/data", navigate=False
    )
    assert (method, extra, name) == (
        "blind",
        {"midpoint": "exact-joint"},
        "student-midpoint-exact-joint",
    )
    assert jump_fn.midpoint == "exact-joint" and isinstance(jump_fn.oracle, MarkovOracleDenoiser)


def test_teacher_midpoints_are_the_blind_jump_with_the_teachers_posterior():
    """``teacher``: the network's prediction is replaced by the frozen teacher's, nothing else."""
    teacher = tiny_teacher("uniform")
    sched = make_scheduler("polynomial")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8, (5, 12), generator=gen)
    t, h = torch.full((5,), 0.2), torch.full((5,), 0.25)
    student_logits = torch.randn(5, 12, 8, generator=gen)
    fn = midpoint_jump(teacher, sched, "uniform", 8, "teacher")
    got = fn(x, student_logits, t, h, torch.Generator().manual_seed(3))
    blind = blind_jump(sched, "uniform", 8)
    with torch.no_grad():
        want = blind(x, teacher(x, t, h), t, h, torch.Generator().manual_seed(3))
    assert torch.equal(got, want)
    assert not torch.equal(got, blind(x, student_logits, t, h, torch.Generator().manual_seed(3)))
