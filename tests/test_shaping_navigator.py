"""Navigator: selection rules, look-ahead views, statistics, and K = 1 == blind (bit-identical)."""

import math

import numpy as np
import pytest
import torch

from tsdfm.config import StudentConfig
from tsdfm.flow import PolynomialScheduler
from tsdfm.models import CausalConfig, CausalLM, Denoiser, DenoiserConfig, build_student
from tsdfm.shaping import (
    CausalCompass,
    Compass,
    Navigator,
    blind_jump,
    look_ahead,
    shortcut_target,
)
from tsdfm.training.objectives import ShortcutObjective

V, MASK, L = 8, 8, 12
SCHED = PolynomialScheduler(1.0)


class FirstTokenEnergy(Compass):
    """Toy energy with a known minimum: ``E(v) = (v[0] - 2)^2``."""

    name = "toy"

    def energy(self, views):
        return (views[:, 0].double() - 2.0) ** 2


def permuted_jump(k):
    """Fake base jump: row b's K candidates are the constant sequences of a random permutation
    of 0..K-1 (drawn from the generator), so the minimiser's position varies by row."""

    def _jump(x, logits, t, h, g):
        n = x.shape[0] // k
        perms = torch.stack([torch.randperm(k, generator=g) for _ in range(n)])
        return perms.reshape(-1, 1).expand(-1, x.shape[1]).clone()

    return _jump


def toy_nav(k, select="argmin", tau=1.0):
    return Navigator(FirstTokenEnergy(), k, select, tau, "mask", MASK)


def toy_inputs(b=64):
    return torch.full((b, 4), MASK), torch.zeros(b, 4, V), torch.zeros(b), torch.full((b,), 0.1)


def test_argmin_picks_known_minimum(gen):
    nav = toy_nav(5)
    out = nav.navigate(permuted_jump(5), *toy_inputs(), gen)
    assert (out.next == 2).all()
    assert out.energies.shape == (64, 5) and (out.chosen_energy == 0).all()
    assert torch.equal(out.candidates[torch.arange(64), out.chosen], out.next)
    # gap = mean of (v - 2)^2 over v = 0..4, i.e. {4, 1, 0, 1, 4}, minus 0 = 2
    assert torch.allclose(out.gap, torch.full((64,), 2.0, dtype=torch.float64))


def test_softmax_cold_matches_argmin_and_hot_is_uniform():
    g = torch.Generator().manual_seed(1)
    x, logits, t, h = toy_inputs(4000)
    cold = toy_nav(4, "softmax", 1e-6).navigate(permuted_jump(4), x, logits, t, h, g)
    assert (cold.next == 2).all()
    hot = toy_nav(4, "softmax", 1e6).navigate(permuted_jump(4), x, logits, t, h, g)
    freq = torch.bincount(hot.next[:, 0], minlength=4).double() / 4000
    assert (freq - 0.25).abs().max() < 5 * math.sqrt(0.25 * 0.75 / 4000)
    # at tau = 1 the choice follows softmax(-E) exactly: E = (0-2)^2, (1-2)^2, 0, (3-2)^2
    mid = toy_nav(4, "softmax", 1.0).navigate(permuted_jump(4), x, logits, t, h, g)
    p = torch.softmax(-torch.tensor([4.0, 1.0, 0.0, 1.0], dtype=torch.float64), 0)
    freq = torch.bincount(mid.next[:, 0], minlength=4).double() / 4000
    assert ((freq - p).abs() < 5 * (p * (1 - p) / 4000).sqrt()).all(), (freq, p)


def test_look_ahead_fills_only_source_positions(gen):
    cand = torch.tensor([[MASK, 3, MASK, 5], [1, MASK, 2, MASK]])
    logits = torch.randn(2, 4, V, generator=gen)
    view = look_ahead(cand, logits, "mask", MASK)
    committed = cand != MASK
    assert torch.equal(view[committed], cand[committed])
    assert torch.equal(view[~committed], logits.argmax(-1)[~committed])
    assert (view != MASK).all()
    same = cand.clamp(max=V - 1)
    assert torch.equal(look_ahead(same, logits, "uniform", MASK), same)


def test_navigated_views_keep_committed_tokens(gen):
    compass = CausalCompass(tiny_causal())
    nav = Navigator(compass, 3, "argmin", 1.0, "mask", MASK)
    x = torch.full((6, L), MASK)
    x[:, :3] = torch.randint(0, V, (6, 3), generator=gen)
    logits = torch.randn(6, L, V, generator=gen)
    out = nav.navigate(
        blind_jump(SCHED, "mask", MASK),
        x,
        logits,
        torch.full((6,), 0.3),
        torch.full((6,), 0.3),
        gen,
    )
    committed = out.candidates != MASK
    assert torch.equal(out.views[committed], out.candidates[committed])
    fill = logits.argmax(-1)[:, None].expand(-1, 3, -1)
    assert torch.equal(out.views[~committed], fill[~committed])
    assert torch.equal(out.candidates[:, :, :3], x[:, None, :3].expand(-1, 3, -1))


def tiny_causal():
    torch.manual_seed(3)
    return CausalLM(CausalConfig(vocab_size=V + 1, num_classes=V, max_len=L, dim=16, n_layers=1))


def tiny_teacher(source):
    torch.manual_seed(0)
    return Denoiser(
        DenoiserConfig(
            vocab_size=V + 1,
            num_classes=V,
            max_len=L,
            dim=32,
            n_layers=2,
            n_heads=2,
            time_cond=source == "uniform",
            source=source,
        )
    ).eval()


def start_state(source, n=16):
    g = torch.Generator().manual_seed(5)
    if source == "mask":
        x = torch.full((n, L), MASK)
        x[:, ::3] = torch.randint(0, V, (n, 4), generator=g)
    else:
        x = torch.randint(0, V, (n, L), generator=g)
    dt = 2.0 ** -torch.randint(0, 4, (n,), generator=g).float()
    t = torch.rand(n, generator=g) * (1 - dt)
    return x, t, dt


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("method", ["rk4", "heun"])
@pytest.mark.parametrize("t_start", [0.0, 0.5])
def test_k1_target_is_bit_identical_to_blind(source, method, t_start):
    teacher = tiny_teacher(source)
    x, t, dt = start_state(source)
    blind = blind_jump(SCHED, source, MASK)
    nav = Navigator(CausalCompass(tiny_causal()), 1, "softmax", 0.5, source, MASK, t_start)

    def target(jump_fn):
        g = torch.Generator().manual_seed(11)
        out = shortcut_target(
            lambda a, b, c: teacher(a, b),
            x,
            t,
            dt,
            method=method,
            space="logits" if method == "rk4" else "probs",
            scheduler=SCHED,
            source=source,
            mask_id=MASK,
            jump_fn=jump_fn,
            generator=g,
        )
        return out, g.get_state()

    (a, ga), (b, gb) = target(blind), target(nav.navigated_jump(blind))
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert nav.stats()["calls"] == (3 if method == "rk4" else 1)
    # K = 2 takes the same path but draws twice the jumps: the stream moves on differently
    nav2 = Navigator(CausalCompass(tiny_causal()), 2, "argmin", 1.0, source, MASK)
    assert not torch.equal(target(nav2.navigated_jump(blind))[1], ga)


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_k1_objective_loss_equals_blind(source):
    teacher = tiny_teacher(source)
    scfg = StudentConfig(teacher_steps=16)
    blind = blind_jump(SCHED, source, MASK)
    nav = Navigator(CausalCompass(tiny_causal()), 1, "argmin", 1.0, source, MASK)
    x1 = torch.randint(0, V, (16, L), generator=torch.Generator().manual_seed(2))
    losses = []
    for jf in (None, nav.navigated_jump(blind)):
        obj = ShortcutObjective(teacher, scfg, MASK, V, jf)
        student = build_student(teacher).train()
        loss, metrics = obj(student, x1, torch.Generator().manual_seed(4))
        losses.append(loss.detach())
    assert torch.equal(losses[0], losses[1])
    assert {"nav_gap", "nav_changed", "nav_energy", "nav_gap_m1"} <= set(metrics)
    assert metrics["nav_changed"] == 0.0 and metrics["nav_gap"] == 0.0


def test_stats_per_midpoint_pause_and_reset(gen):
    nav = toy_nav(3)
    jf = nav.navigated_jump(permuted_jump(3))
    assert jf.navigator is nav
    for _ in range(2):
        nav.begin_target()
        for _ in range(3):
            jf(*toy_inputs(10), gen)
    s = nav.stats()
    assert s["calls"] == 6 and {"gap_m1", "gap_m2", "gap_m3"} <= set(s) and "gap_m4" not in s
    assert s["gap"] == pytest.approx(5 / 3)  # mean of {4, 1, 0} - 0
    assert 0 < s["changed"] < 1 and s["energy"] == 0.0
    with nav.paused():
        jf(*toy_inputs(10), gen)
    assert nav.stats()["calls"] == 6
    nav.reset_stats()
    assert nav.stats()["calls"] == 0 and np.isnan(nav.stats()["gap"])


def test_objective_stats_cover_the_logging_interval():
    teacher = tiny_teacher("mask")
    nav = Navigator(CausalCompass(tiny_causal()), 2, "argmin", 1.0, "mask", MASK)
    obj = ShortcutObjective(
        teacher,
        StudentConfig(teacher_steps=16, target="heun"),
        MASK,
        V,
        nav.navigated_jump(blind_jump(SCHED, "mask", MASK)),
        stats_every=2,
    )
    student = build_student(teacher).train()
    x1 = torch.randint(0, V, (8, L), generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    m1 = obj(student, x1, g)[1]
    assert nav.stats()["calls"] == 1 and set(m1) >= {"nav_gap", "nav_gap_m1"}
    obj(student, x1, g)
    assert nav.stats()["calls"] == 0  # reset after the 2nd call, the logged one
    student.eval()
    obj(student, x1, g)  # validation: not recorded
    assert nav.stats()["calls"] == 0


def test_navigator_rejects_bad_settings():
    from tsdfm.errors import TsdfmError

    for kw in ({"candidates": 0}, {"select": "max"}, {"tau": 0.0}, {"t_start": 1.0}):
        with pytest.raises(TsdfmError):
            Navigator(FirstTokenEnergy(), **{"mask_id": MASK, **kw})


def test_window_navigates_only_rows_at_or_after_t_start():
    """t_start: rows whose jump starts before it keep candidate 0 (blind in law), the others the
    argmin; the statistics describe only the navigated rows; t_start = 0 is unchanged."""
    x, logits, _, h = toy_inputs(64)
    t = torch.linspace(0, 0.9, 64)
    early = t < 0.5
    full = Navigator(FirstTokenEnergy(), 5, "argmin", 1.0, "mask", MASK)
    windowed = Navigator(FirstTokenEnergy(), 5, "argmin", 1.0, "mask", MASK, t_start=0.5)
    a = full.navigate(permuted_jump(5), x, logits, t, h, torch.Generator().manual_seed(3))
    b = windowed.navigate(permuted_jump(5), x, logits, t, h, torch.Generator().manual_seed(3))
    assert torch.equal(a.candidates, b.candidates)  # same draws, only the choice differs
    assert (b.next[~early] == 2).all() and (b.chosen[early] == 0).all()
    assert torch.equal(b.next[early], b.candidates[early, 0])
    assert (b.next[early] != 2).any()  # candidate 0 is not always the minimiser
    assert a.navigated is None and torch.equal(b.navigated, ~early)
    assert windowed.stats()["energy"] == 0.0 and full.stats()["energy"] == 0.0
    assert windowed.stats()["gap"] == pytest.approx(2.0)  # navigated rows only


def test_window_past_every_row_keeps_candidate_zero(gen):
    """A window that starts after every row's t makes a K = 4 navigator return candidate 0
    everywhere (blind in law), whatever the energies say, and record no statistics."""
    nav4 = Navigator(FirstTokenEnergy(), 4, "argmin", 1.0, "mask", MASK, t_start=0.99)
    out = nav4.navigate(permuted_jump(4), *toy_inputs(32), gen)
    assert (out.chosen == 0).all() and (out.next != 2).any()
    assert np.isnan(nav4.stats()["gap"])
