"""The mixture student (``student.kind=mixture``): one step that samples a joint law.

The closed-form case: L = 2 positions, V = 2 symbols, data uniform on {00, 11} (perfectly
correlated), mask source, linear kappa, one step t = 0 -> 1. The exact denoiser predicts 1/2 at
a position whose neighbour is masked and copies a visible neighbour. Two chained half steps
(the first half commits each position with probability 1/2, the second all the rest) end on
unequal symbols only when both positions commit in the same half (1/4 + 1/4), drawn
independently (unequal with probability 1/2): P(y1 != y2) = 1/4, marginals 1/2; the joint is
(3/8, 1/8, 1/8, 3/8), 0.25 in TV from the product of its marginals. A product step with
marginals 1/2 has P(y1 != y2) = 1/2 whatever it is trained on, and TV 0 to its own marginals.
"""

import json

import pytest
import torch
from test_shaping_cli import run, student_args  # noqa: F401 (module-scoped tiny markov run)

from tsdfm.cli import main
from tsdfm.config import StudentConfig
from tsdfm.errors import TsdfmError
from tsdfm.flow import make_scheduler, sample
from tsdfm.models import Denoiser, DenoiserConfig, build_student, load_pretrained
from tsdfm.shaping import blind_jump, shortcut_target
from tsdfm.training.mixture import mixture_losses

MASK, C, LIN = 2, 2, make_scheduler("polynomial", 1.0)


def exact_denoiser(x, t, h):
    """The posterior of the {00, 11} data: copy a visible neighbour, else 1/2 (logits)."""
    other = x.flip(1)
    seen = other != MASK
    point = torch.nn.functional.one_hot(torch.where(seen, other, 0), C).float()
    return torch.where(seen.unsqueeze(-1), (point - 1) * 1e9, torch.zeros(*x.shape, C))


def composite_draws(n, seed):
    """``(target log-probs, y)`` of the exact two-half-step composition from all-mask, t=0, dt=1."""
    x = torch.full((n, 2), MASK)
    t, dt = torch.zeros(n), torch.ones(n)
    g = torch.Generator().manual_seed(seed)
    return shortcut_target(
        exact_denoiser, x, t, dt, method="heun", space="probs", scheduler=LIN, source="mask",
        mask_id=MASK, jump_fn=blind_jump(LIN, "mask", MASK), generator=g, return_sample=True,
    )  # fmt: skip


def unequal_and_selftv(y):
    """P(y1 != y2) and the TV between the empirical joint and the product of its marginals."""
    joint = torch.zeros(2, 2)
    joint.index_put_((y[:, 0], y[:, 1]), torch.ones(len(y)), accumulate=True)
    joint /= len(y)
    product = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    return float(joint[0, 1] + joint[1, 0]), float((joint - product).abs().sum() / 2)


def test_the_composed_step_is_correlated_in_closed_form():
    n = 40_000
    target, y = composite_draws(n, 0)
    assert bool((y != MASK).all())  # the step ends at t = 1: every position committed
    unequal, selftv = unequal_and_selftv(y)
    se = (0.25 * 0.75 / n) ** 0.5
    assert abs(unequal - 0.25) < 4 * se, unequal
    assert abs(float(y.float().mean()) - 0.5) < 4 * (0.25 / (2 * n)) ** 0.5
    assert abs(selftv - 0.25) < 0.02  # 0.25 in law
    # the per-position target averages to the marginal 1/2 (the martingale of the exact denoiser)
    torch.testing.assert_close(target.exp().mean((0, 1)), torch.full((C,), 0.5), atol=0.01, rtol=0)


def tiny_student(codes):
    torch.manual_seed(0)
    teacher = Denoiser(
        DenoiserConfig(vocab_size=3, num_classes=C, max_len=2, dim=16, n_layers=1, n_heads=2)
    )
    return build_student(teacher, latent_codes=codes)


def fit(student, codes, steps=150, batch=128):
    """Train on the composed step at (t=0, dt=1) with the mixture objective's losses (w = 1,
    every code on every row, as ``MixtureObjective``); a product student gets the same
    per-position KL (its only term)."""
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    x = torch.full((batch, 2), MASK)
    t, dt, q = torch.zeros(batch), torch.ones(batch), torch.ones(batch, dtype=torch.float64)
    for i in range(steps):
        target, y = composite_draws(batch, 100 + i)
        if codes:
            z = torch.arange(codes).repeat_interleave(batch)
            logits = student(x.repeat(codes, 1), t.repeat(codes), dt.repeat(codes), z)
            logits = logits.view(codes, batch, 2, C)
        else:
            logits = student(x, t, dt)[None]
        marginal, corr, _ = mixture_losses(logits, target, x, y, q, x == MASK, "mask", MASK)
        loss = marginal + (corr if codes else 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval()


def one_step(student, n, seed):
    x0 = torch.full((n, 2), MASK)
    g = torch.Generator().manual_seed(seed)
    return sample(student, x0, 1, LIN, "mask", MASK, g).ids


def test_a_trained_mixture_step_reproduces_the_correlation_a_product_step_cannot():
    n = 8_000
    mixture = one_step(fit(tiny_student(4), 4), n, seed=5)
    product = one_step(fit(tiny_student(0), 0), n, seed=5)
    mix_unequal, mix_tv = unequal_and_selftv(mixture)
    prod_unequal, prod_tv = unequal_and_selftv(product)
    se = (0.25 / n) ** 0.5
    # product: independent positions, marginals 1/2 -> P(unequal) = 1/2, joint = product
    assert abs(prod_unequal - 0.5) < 4 * se and prod_tv < 0.03
    # mixture: the composition's 1/4 (a fitted model: a tolerance beyond sampling error) and its
    # correlation, far outside what any product step reaches
    assert abs(mix_unequal - 0.25) < 0.05, mix_unequal
    assert mix_tv > 0.18, mix_tv
    assert abs(float(mixture.float().mean()) - 0.5) < 0.05


def test_mixture_losses_prefer_the_correlated_law():
    """An analytically set two-component mixture (all 00 or all 11) against the best product
    (1/2, 1/2) on draws of the data law {00, 11}: equal marginal term, lower correlation term."""
    n = 4
    y = torch.tensor([[0, 0], [1, 1], [0, 0], [1, 1]])
    x = torch.full((n, 2), MASK)
    target = torch.full((n, 2, C), 0.5).log()
    q, changeable = torch.ones(n, dtype=torch.float64), torch.ones(n, 2, dtype=torch.bool)
    big = 30.0
    comp = torch.tensor([[[big, 0.0]] * 2, [[0.0, big]] * 2])  # z -> all 0, z -> all 1
    mixture = comp[:, None].expand(2, n, 2, C)
    product = torch.zeros(1, n, 2, C)
    m_marg, m_corr, m_pmi = mixture_losses(mixture, target, x, y, q, changeable, "mask", MASK)
    p_marg, p_corr, p_pmi = mixture_losses(product, target, x, y, q, changeable, "mask", MASK)
    assert abs(float(m_marg - p_marg)) < 1e-6 and abs(float(p_corr)) < 1e-6
    # pmi = log P(y) - sum log P_i(y_i) = log(1/2) - 2 log(1/2) = log 2 per row
    assert abs(float(m_pmi) - torch.log(torch.tensor(2.0))) < 1e-4
    assert float(m_corr) < -0.3  # -log 2 per row over 2 positions


def test_uniform_source_likelihood_counts_the_stay_mass():
    """Uniform source: a position that keeps its token has ``(1 - q) + q s(x)``."""
    from tsdfm.training.mixture import step_log_likelihoods

    logs = torch.log_softmax(torch.tensor([[[[0.0, 1.0]]]]), -1)  # M = B = L = 1
    x, q = torch.tensor([[1]]), torch.tensor([0.25], dtype=torch.float64)
    keep = step_log_likelihoods(logs, x, x, q, "uniform", 99, torch.ones(1, 1, dtype=torch.bool))
    move = step_log_likelihoods(
        logs, x, 1 - x, q, "uniform", 99, torch.ones(1, 1, dtype=torch.bool)
    )
    s = logs.exp()[0, 0, 0]
    assert abs(float(keep.exp()) - (0.75 + 0.25 * float(s[1]))) < 1e-6
    assert abs(float(move.exp()) - 0.25 * float(s[0])) < 1e-6


def test_sampler_draws_one_latent_per_row_per_step_and_a_seed_fixes_it(tmp_path):
    student = tiny_student(4)
    with torch.no_grad():  # make z matter: well-separated code embeddings
        student.latent_emb.weight.normal_(0, 1.0)
    x0 = torch.full((64, 2), MASK)
    calls = []

    def spy(x, t, dt, z=None):
        calls.append(None if z is None else tuple(z.shape))
        return student(x, t, dt, z)

    spy.config = student.config
    a = sample(spy, x0, 3, LIN, "mask", MASK, torch.Generator().manual_seed(3)).ids
    assert calls == [(64,)] * 3  # one pass per step, one latent code per row
    b = sample(student, x0, 3, LIN, "mask", MASK, torch.Generator().manual_seed(3)).ids
    assert torch.equal(a, b)
    with pytest.raises(TsdfmError, match="mixture student"):
        sample(student, x0, 3, LIN, "mask", MASK, torch.Generator(), cache=True)
    # save / load round trip: config.json records the latent, the function is the same
    student.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["latent_codes"] == 4
    loaded, _ = load_pretrained(tmp_path / "m")
    z = torch.tensor([0, 1, 2, 3, 1])
    xs, ts = torch.full((5, 2), MASK), torch.zeros(5)
    torch.testing.assert_close(loaded(xs, ts, ts + 1, z), student.eval()(xs, ts, ts + 1, z))
    c = sample(loaded, x0, 3, LIN, "mask", MASK, torch.Generator().manual_seed(3)).ids
    assert torch.equal(a, c)


def test_a_fresh_mixture_student_is_near_its_teacher_and_a_product_one_refuses_z():
    """The code embeddings start small and random (they must differ to ever separate): the
    fresh student is its teacher up to that perturbation; with them zeroed, exactly."""
    student = tiny_student(4)
    product = tiny_student(0)
    x, t, z = torch.randint(0, 3, (3, 2)), torch.rand(3), torch.tensor([0, 2, 3])
    p_mix, p_prod = (torch.softmax(m.detach(), -1) for m in (student(x, t, t, z), product(x, t, t)))
    assert float((p_mix - p_prod).abs().max()) < 0.05
    with torch.no_grad():
        student.latent_emb.weight.zero_()
    torch.testing.assert_close(student(x, t, t, z), product(x, t, t))
    with pytest.raises(ValueError, match="no latent"):
        product(x, t, t, z)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"kind": "joint"}, "student.kind must be one of product, mixture, chain"),
        ({"kind": "mixture", "latent_codes": 1}, "latent_codes must be >= 2"),
        ({"kind": "mixture", "joint_weight": 1.5}, "joint_weight must be in"),
        ({"kind": "mixture", "target": "rk4", "target_space": "logits"}, "target=heun"),
        ({"kind": "mixture", "target_temperature": 0.9}, "target_temperature=1"),
        ({"kind": "chain", "data_weight": -1.0}, "data_weight must be >= 0"),
        ({"data_weight": 0.5}, "data_weight is a term of the correlated"),
        ({"kind": "chain", "latent_codes": 1}, "latent_codes must be >= 2 for student.kind=chain"),
    ],
)
def test_config_refuses_bad_mixture_settings(changes, message):
    with pytest.raises(TsdfmError, match=message):
        StudentConfig(**changes).validate()


def test_mixture_student_from_the_cli(run, capsys):  # noqa: F811
    """``--kind mixture``: trains, records its kind and latent size, samples through the usual
    paths; K = 1 shaping gives the blind mixture student's losses exactly; bad kinds exit 2."""
    import csv

    from tsdfm.generation import draw_samples
    from tsdfm.generator import Generator

    root = run[0]
    blind, k1 = root / "mix-blind", root / "mix-k1"
    assert main(student_args(run, blind, "--kind", "mixture", "student.latent_codes=3")) == 0
    flags = ("--kind", "mixture", "student.latent_codes=3", "--shaping", "oracle")
    assert main(student_args(run, k1, *flags, "--candidates", "1")) == 0
    loss = lambda d: [r["loss"] for r in csv.DictReader(open(d / "log.csv"))]  # noqa: E731
    assert loss(blind) == loss(k1)
    rows = list(csv.DictReader(open(blind / "log.csv")))
    assert {"mix_marginal", "mix_corr", "mix_pmi"} <= set(rows[-1])
    cfg = json.loads((blind / "model" / "config.json").read_text())
    assert cfg["latent_codes"] == 3 and cfg["extra"]["kind"] == "mixture"
    a = draw_samples(blind / "model", steps=4, num=6, seed=2, progress=False, device="cpu")
    b = draw_samples(blind / "model", steps=4, num=6, seed=2, progress=False, device="cpu")
    assert torch.equal(a.ids, b.ids) and a.ids.shape == (6, 16)
    assert len(Generator.from_pretrained(blind / "model", device="cpu").generate(2, steps=2)) == 2
    out = root / "mix-samples"
    assert (
        main(
            [
                "sample",
                "--model",
                str(blind / "model"),
                "--steps",
                "2",
                "--num",
                "3",
                "--out",
                str(out / "s.jsonl"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(student_args(run, root / "bad", "student.kind=joint")) == 2
    assert "student.kind" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_mixture_objective_runs_on_both_sources(source):
    """One training call per source: finite loss, gradients reach the code embeddings, and the
    EMA targets are drawn with one code per row (the student's own mixture)."""
    from test_shortcut import tiny_teacher

    from tsdfm.training.mixture import MixtureObjective

    teacher = tiny_teacher(source)
    student = build_student(teacher, latent_codes=3).train()
    cfg = StudentConfig(teacher_steps=8, kind="mixture", latent_codes=3)
    obj = MixtureObjective(teacher, cfg, 8, 8, latent_codes=3, joint_weight=1.0)
    obj.target_model = build_student(teacher, latent_codes=3).eval()
    x1 = torch.randint(0, 8, (6, 12), generator=torch.Generator().manual_seed(0))
    loss, metrics = obj(student, x1, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and set(metrics) >= {"mix_marginal", "mix_corr", "mix_pmi"}
    loss.backward()
    assert float(student.latent_emb.weight.grad.abs().sum()) > 0
