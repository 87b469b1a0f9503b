"""Shortcut targets and the student objective (FS-DFM recipe, DESIGN.md section 3)."""

import itertools

import numpy as np
import pytest
import torch

from tsdfm.config import StudentConfig, TrainConfig
from tsdfm.errors import TsdfmError
from tsdfm.flow import PolynomialScheduler, jump, switch_probability
from tsdfm.models import Denoiser, DenoiserConfig, build_student
from tsdfm.shaping import blind_jump, sample_step_and_time, shortcut_target, step_size_weights
from tsdfm.training.loop import Trainer
from tsdfm.training.objectives import ShortcutObjective

V, L, MASK = 3, 3, 3
SCHED = PolynomialScheduler(1.0)


def joint():
    """A correlated distribution over V**L sequences (neighbours tend to be equal)."""
    probs = {}
    for seq in itertools.product(range(V), repeat=L):
        w = 1.0
        for a, b in zip(seq, seq[1:], strict=False):
            w *= 4.0 if a == b else 1.0
        w *= seq[0] + 1
        probs[seq] = w
    z = sum(probs.values())
    return {k: v / z for k, v in probs.items()}


JOINT = joint()
SEQS = torch.tensor(list(JOINT))  # [V**L, L]
PROBS = torch.tensor(list(JOINT.values()), dtype=torch.float64)
ONEHOT = torch.nn.functional.one_hot(SEQS, V).double()  # [S, L, V]


def oracle(x, t, dt):
    """Exact mask-source denoiser: p(x_i | visible tokens), by enumerating the joint."""
    compatible = ((x[:, None, :] == MASK) | (x[:, None, :] == SEQS[None])).all(-1)  # [B, S]
    w = compatible.double() * PROBS[None]
    out = torch.einsum("bs,slv->blv", w, ONEHOT)
    out = out / out.sum(-1, keepdim=True)
    return out.clamp_min(1e-12).log().float()


@pytest.mark.parametrize("method", ["heun"])
def test_probs_target_matches_two_half_step_composition(method):
    """Exact oracle: E[probs target] = one-step posterior = empirical landing distribution of
    two chained half steps (the martingale property), within sampling error."""
    n = 3000
    x_t = torch.full((n, L), MASK)
    x_t[:, 0] = 2  # condition on a visible first token
    t = torch.full((n,), 1 / 3)
    dt = torch.full((n,), 0.5)
    g = torch.Generator().manual_seed(0)
    jf = blind_jump(SCHED, "mask", MASK)
    target = shortcut_target(
        oracle,
        x_t,
        t,
        dt,
        method=method,
        space="probs",
        scheduler=SCHED,
        source="mask",
        mask_id=MASK,
        jump_fn=jf,
        generator=g,
    ).exp()
    posterior = oracle(x_t[:1], t[:1], dt[:1]).exp()[0]
    mean_target = target.double().mean(0)
    # empirical: chain two half steps with the oracle, look at positions that unmasked
    m1 = jump(x_t, oracle(x_t, t, dt), t.double(), 0.25, SCHED, "mask", MASK, g)
    m2 = jump(m1, oracle(m1, t + 0.25, dt), (t + 0.25).double(), 0.25, SCHED, "mask", MASK, g)
    for i in (1, 2):
        landed = m2[:, i][m2[:, i] != MASK]
        emp = torch.bincount(landed, minlength=V).double() / len(landed)
        se = (emp * (1 - emp) / len(landed)).sqrt().clamp_min(1e-3)
        assert ((emp - posterior[i].double()).abs() < 5 * se).all(), (i, emp, posterior[i])
        assert torch.allclose(mean_target[i], posterior[i].double(), atol=0.02), (i, mean_target[i])
    # probability of unmasking over the full step is q(t, dt)
    q = float(switch_probability(1 / 3, 0.5, SCHED))
    frac = float((m2[:, 1:] != MASK).double().mean())
    assert abs(frac - q) < 5 * np.sqrt(q * (1 - q) / (2 * n))


def test_logit_target_is_sharper_than_probs():
    n = 500
    x_t = torch.full((n, L), MASK)
    t, dt = torch.zeros(n), torch.ones(n)
    kw = dict(
        method="rk4",
        scheduler=SCHED,
        source="mask",
        mask_id=MASK,
        jump_fn=blind_jump(SCHED, "mask", MASK),
    )
    lp = shortcut_target(
        oracle, x_t, t, dt, space="logits", generator=torch.Generator().manual_seed(1), **kw
    )
    kw["method"] = "heun"
    pp = shortcut_target(
        oracle, x_t, t, dt, space="probs", generator=torch.Generator().manual_seed(1), **kw
    )
    ent = lambda logp: float(-(logp.exp() * logp).sum(-1).mean())  # noqa: E731
    assert ent(lp) < ent(pp)


@pytest.mark.parametrize("space", ["probs", "logits"])
def test_target_temperature_is_a_per_row_power(space):
    """tau = 1 is the plain target bit for bit; tau < 1 is that target raised to 1/tau and
    renormalised (the same midpoints: same seed), hence sharper."""
    n = 200
    x_t = torch.full((n, L), MASK)
    x_t[:, 0] = 1
    t, dt = torch.full((n,), 0.25), torch.full((n,), 0.5)

    def target(**kw):
        return shortcut_target(
            oracle, x_t, t, dt, method="rk4" if space == "logits" else "heun", space=space,
            scheduler=SCHED, source="mask", mask_id=MASK, jump_fn=blind_jump(SCHED, "mask", MASK),
            generator=torch.Generator().manual_seed(3), **kw,
        )  # fmt: skip

    plain = target()
    assert torch.equal(target(temperature=1.0), plain)
    sharp = target(temperature=0.5)
    torch.testing.assert_close(sharp, torch.log_softmax(2 * plain, dim=-1))
    ent = lambda logp: float(-(logp.exp() * logp).sum(-1).mean())  # noqa: E731
    assert ent(sharp) < ent(plain) - 0.01
    with pytest.raises(TsdfmError, match="temperature"):
        target(temperature=0.0)
    with pytest.raises(TsdfmError, match="target_temperature"):
        StudentConfig(target_temperature=-1.0).validate()


def _committed_target(committed, jump_fn, n=4000, seed=5, method="heun"):
    x_t = torch.full((n, L), MASK)
    x_t[:, 0] = 0
    t, dt = torch.full((n,), 0.25), torch.full((n,), 0.5)
    return shortcut_target(
        oracle, x_t, t, dt, method=method, space="probs", scheduler=SCHED, source="mask",
        mask_id=MASK, jump_fn=jump_fn, generator=torch.Generator().manual_seed(seed),
        committed=committed,
    ).exp().double()  # fmt: skip


@pytest.mark.parametrize("method", ["heun"])
def test_committed_token_target_is_the_same_in_expectation_for_blind_jumps(method):
    """committed=token swaps p(k1) for the one-hot of the committed token at positions a
    midpoint committed: per row it differs (one-hots appear), averaged over blind midpoints it
    is the same target (E[delta(m_i)] = p(k1))."""
    jf = blind_jump(SCHED, "mask", MASK)
    rb = _committed_target("denoiser", jf, method=method)
    tok = _committed_target("token", jf, method=method)
    assert (tok - rb).abs().amax() > 0.1  # some rows carry a committed token's one-hot
    assert torch.allclose(tok.sum(-1), torch.ones_like(tok.sum(-1)), atol=1e-5)
    n = tok.shape[0]
    for i in (1, 2):
        diff = tok[:, i].mean(0) - rb[:, i].mean(0)
        se = tok[:, i].std(0) / n**0.5
        assert (diff.abs() < 5 * se + 1e-4).all(), (i, diff, se)


def test_committed_token_target_carries_a_biased_midpoint():
    """A midpoint that always commits token 2 (an extreme 'navigator'): committed=denoiser
    erases the choice (the target is p(k1), identical to a blind one at those positions),
    committed=token puts the chosen token's weight into the target."""
    jf = blind_jump(SCHED, "mask", MASK)

    def biased(x, logits, t, h, g):
        out = jf(x, logits, t, h, g)
        return torch.where((out != MASK) & (x == MASK), torch.full_like(out, 2), out)

    rb_blind = _committed_target("denoiser", jf, n=2000)
    rb = _committed_target("denoiser", biased, n=2000)
    tok = _committed_target("token", biased, n=2000)
    # token 2's mean target mass: the token target moves towards the forced token
    assert float(tok[:, 1:, 2].mean()) > float(rb[:, 1:, 2].mean()) + 0.05
    assert abs(float(rb[:, 1:, 2].mean()) - float(rb_blind[:, 1:, 2].mean())) < 0.1


def test_committed_token_needs_probs_and_the_mask_source():
    kw = dict(method="heun", scheduler=SCHED, mask_id=MASK, generator=torch.Generator())
    x = torch.full((2, L), MASK)
    t, dt = torch.zeros(2), torch.ones(2)
    jf = blind_jump(SCHED, "mask", MASK)
    with pytest.raises(TsdfmError, match="target_space=probs"):
        shortcut_target(oracle, x, t, dt, space="logits", source="mask", jump_fn=jf,
                        committed="token", **kw)  # fmt: skip
    with pytest.raises(TsdfmError, match="mask source only"):
        shortcut_target(oracle, x, t, dt, space="probs", source="uniform", jump_fn=jf,
                        committed="token", **kw)  # fmt: skip
    with pytest.raises(TsdfmError, match="unknown committed"):
        shortcut_target(oracle, x, t, dt, space="probs", source="mask", jump_fn=jf,
                        committed="chosen", **kw)  # fmt: skip
    with pytest.raises(TsdfmError, match="target_space=probs"):
        StudentConfig(target_committed="token", target_space="logits").validate()
    with pytest.raises(TsdfmError, match="target_committed"):
        StudentConfig(target_committed="onehot").validate()


def garbage_at_visible(x, t, dt):
    """The oracle at masked positions, noise at visible ones: what a trained mask-source
    network outputs where it was never trained (the input's committed positions)."""
    out = oracle(x, t, dt)
    noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(int(x.sum())))
    return torch.where((x != MASK).unsqueeze(-1), 3 * noise, out)


def test_carry_over_restores_the_exact_denoiser_at_visible_positions():
    """RK4's m2 and m3 jump with predictions made on earlier midpoints; at positions those
    committed, a network's output is noise. carry_over=True replaces it by the point mass the
    exact denoiser has there, so a noisy-at-visible model gives the oracle's targets bit for
    bit (same seed: the jump's random stream does not depend on the model), and without it the
    targets differ."""
    n = 400
    x_t = torch.full((n, L), MASK)
    x_t[:, 0] = 1
    t, dt = torch.full((n,), 0.25), torch.full((n,), 0.75)

    def target(fn, carry):
        return shortcut_target(
            fn, x_t, t, dt, method="rk4", space="logits", scheduler=SCHED, source="mask",
            mask_id=MASK, jump_fn=blind_jump(SCHED, "mask", MASK),
            generator=torch.Generator().manual_seed(11), carry_over=carry,
        )  # fmt: skip

    exact = target(oracle, True)
    torch.testing.assert_close(target(garbage_at_visible, True), exact)
    assert (target(garbage_at_visible, False) - exact).abs().amax() > 0.05


def test_carry_over_logits_are_point_masses_on_visible_tokens():
    from tsdfm.shaping.shortcut import carry_over_logits

    x = torch.tensor([[MASK, 2, 0]])
    logits = torch.randn(1, L, V)
    out = carry_over_logits(logits, x, MASK).softmax(-1)
    torch.testing.assert_close(out[0, 0], logits[0, 0].softmax(-1))
    assert float(out[0, 1, 2]) == 1.0 and float(out[0, 2, 0]) == 1.0


def test_step_size_schemes():
    w_inv = step_size_weights(1024, "inverse")
    w_chain = step_size_weights(1024, "chain")
    assert w_inv[3] < 0.01 and abs(float(w_inv[-1]) - 0.5) < 0.01  # 1/8 starved, 1/N half
    assert torch.allclose(w_chain, torch.full_like(w_chain, 1 / 11))
    dt, t = sample_step_and_time(4000, 64, "chain", torch.Generator().manual_seed(0))
    assert ((t + dt) <= 1.0 + 1e-6).all()
    assert torch.allclose((t * 64).round(), t * 64)  # on the grid k/N
    assert set(dt.tolist()) == {2.0**-j for j in range(7)}


def tiny_teacher(source="mask"):
    torch.manual_seed(0)
    return Denoiser(
        DenoiserConfig(
            vocab_size=9,
            num_classes=8,
            max_len=12,
            dim=32,
            n_layers=2,
            n_heads=2,
            time_cond=source == "uniform",
            source=source,
        )
    ).eval()


def make_student_trainer(out, source="mask", steps=30, space="probs"):
    teacher = tiny_teacher(source)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build_student(teacher)
    scfg = StudentConfig(teacher_steps=16, target_space=space)
    obj = ShortcutObjective(teacher, scfg, 8, 8)
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 8, (64, 1)) + np.arange(12)) % 8
    cfg = TrainConfig(
        steps=steps,
        batch_size=16,
        lr=3e-3,
        warmup_steps=2,
        eval_every=100,
        ckpt_every=15,
        log_every=1,
        ema_decay=0.9,
    )
    tr = Trainer(student, obj, data, data[:16], cfg, out, progress=False)
    obj.target_model = tr.ema.module
    return tr


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_distillation_loss_decreases(tmp_path, source):
    tr = make_student_trainer(tmp_path, source, steps=60, space="probs")
    tr.fit()
    import csv

    rows = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "log.csv"))]
    assert np.mean(rows[-10:]) < np.mean(rows[:10])


def test_student_resume_is_exact(tmp_path):
    import csv

    make_student_trainer(tmp_path / "a").fit()
    b = make_student_trainer(tmp_path / "b")
    inner = b.objective

    class Crash(Exception):
        pass

    def crash(model, x1, g):
        if b.step == 20:
            raise Crash
        return inner(model, x1, g)

    b.objective = crash
    with pytest.raises(Crash):
        b.fit()
    make_student_trainer(tmp_path / "b").fit(resume=True)
    read = lambda d: [(r["step"], r["loss"]) for r in csv.DictReader(open(d / "log.csv"))]  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b")


def test_objective_passes_carry_over_and_committed_to_the_targets():
    """The student config's carry_over / target_committed reach shortcut_target: with a real
    (random) network, whose visible-position outputs are arbitrary, each changes the targets of
    the same rows under the same seed; the defaults reproduce the plain recipe."""
    teacher = tiny_teacher("mask")
    x_t = torch.full((6, 12), 8)
    x_t[:, ::3] = 1
    t, dt = torch.full((6,), 0.25), torch.full((6,), 0.5)

    def targets(**kw):
        obj = ShortcutObjective(teacher, StudentConfig(teacher_steps=16, **kw), 8, 8)
        return obj.targets(x_t, t, dt, torch.Generator().manual_seed(4))[0]

    masked = x_t == 8  # the loss reads masked positions only
    plain = targets()  # exact target: carry_over never reaches it, committed=auto -> denoiser
    torch.testing.assert_close(
        targets(carry_over=False, target_committed="denoiser")[masked], plain[masked]
    )
    assert not torch.allclose(targets(target_committed="token"), plain)
    logit = dict(target="rk4", target_space="logits")
    assert not torch.allclose(targets(carry_over=True, **logit), targets(carry_over=False, **logit))


def test_visible_outputs_script_separates_visible_from_masked(load_script):
    """studies/visible_outputs.py: per-kind means over exactly the positions of that kind (a
    model that is a point mass on token 0 everywhere gives p_true = share of zeros there)."""
    mod = load_script("visible_outputs")

    class PointMass(torch.nn.Module):
        config = DenoiserConfig(vocab_size=9, num_classes=8, max_len=12, source="mask")

        def forward(self, x, t):
            out = torch.full((*x.shape, 8), -1e9)
            out[..., 0] = 0.0
            return out

    x1 = torch.randint(0, 8, (50, 12), generator=torch.Generator().manual_seed(0))
    r = mod.visible_vs_masked(PointMass(), x1, 0.5, 0.5, seed=3)
    masked = torch.rand(x1.shape, generator=torch.Generator().manual_seed(3)) < 0.5
    for kind, where in (("visible", ~masked), ("masked", masked)):
        assert r[kind]["entropy"] == pytest.approx(0.0, abs=1e-6)
        assert r[kind]["p_true"] == pytest.approx(float((x1[where] == 0).double().mean()))
