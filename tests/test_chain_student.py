"""The chain student (``student.kind=chain``): a Markov chain of codes along the positions.

Checked against answers that do not come from the code under test: the forward algorithm
against a brute-force sum over every code sequence; the sampler's one-step law against the
likelihood the objective trains (Monte Carlo frequencies of every outcome); training on the
closed-form L = 2 chain of tests/test_mixture.py, whose composed step has P(y1 != y2) = 1/4
where any product step has 1/2.
"""

import itertools
import json
import math

import pytest
import torch
from test_mixture import LIN, MASK, C, composite_draws, unequal_and_selftv
from test_shaping_cli import run  # noqa: F401 (module-scoped tiny markov run)

from tsdfm.flow import sample
from tsdfm.models import Denoiser, DenoiserConfig, build_student, latent, load_pretrained
from tsdfm.training.mixture import chain_log_likelihood, chain_losses, step_log_likelihoods


def tiny_chain(codes=2, length=2, scale=0.0, seed=0, features="last"):
    """A chain student over ``C`` symbols; ``scale > 0`` randomises its chain so that codes
    matter (well-separated offsets, transitions that depend on the position's features).
    ``features="penultimate"``: its transitions read the last block's input (two blocks, so
    that input is not the embedding alone)."""
    torch.manual_seed(seed)
    layers = 1 if features == "last" else 2
    teacher = Denoiser(
        DenoiserConfig(
            vocab_size=C + 1, num_classes=C, max_len=length, dim=16, n_layers=layers, n_heads=2
        )
    )
    student = build_student(teacher, latent_codes=codes, latent_chain=True, chain_features=features)
    if scale:
        with torch.no_grad():
            student.chain.shift.normal_(0, scale)
            student.head.weight.normal_(0, 0.3)  # so that the codes' offsets move the logits
            student.chain.unary.weight.normal_(0, 0.1)
            student.chain.pairwise.normal_(0, scale / 2)
    return student


def one_step(student, n, seed, length=2):
    """``n`` draws of one step t = 0 -> 1 from all-mask (every position lands)."""
    x0 = torch.full((n, length), MASK)
    return sample(student, x0, 1, LIN, "mask", MASK, torch.Generator().manual_seed(seed)).ids


def log_likelihoods(student, x, y, q):
    logits, log_trans = student.chain_terms(x, torch.zeros(len(x)), torch.full((len(x),), 1.0))
    logs = torch.log_softmax(logits, -1).permute(2, 0, 1, 3)
    ll = step_log_likelihoods(logs, x, y, q, "mask", MASK, x == MASK).permute(1, 2, 0)
    return ll, log_trans


@pytest.mark.parametrize("features", ["last", "penultimate", "changeable"])
def test_forward_algorithm_equals_the_sum_over_every_code_sequence(features):
    student = tiny_chain(codes=3, length=4, scale=1.0, features=features)
    x = torch.tensor([[MASK] * 4, [0, MASK, MASK, 1], [MASK, 1, MASK, MASK]])
    y = torch.tensor([[0, 1, MASK, 1], [0, 1, 1, 1], [MASK, 1, 0, 1]])
    q = torch.full((3,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        ll, log_trans = log_likelihoods(student, x, y, q)
        joint, log_pi = chain_log_likelihood(ll, log_trans)
    for b in range(3):
        paths = []
        for z in itertools.product(range(3), repeat=4):
            lp = log_trans[b, 0, 0, z[0]] + ll[b, 0, z[0]]
            for i in range(1, 4):
                lp = lp + log_trans[b, i, z[i - 1], z[i]] + ll[b, i, z[i]]
            paths.append(lp)
        assert abs(float(torch.logsumexp(torch.stack(paths), 0)) - float(joint[b])) < 1e-5
    # the prior marginals: each a distribution, not all uniform
    torch.testing.assert_close(log_pi.exp().sum(-1), torch.ones(3, 4))
    assert float((log_pi.exp() - 1 / 3).abs().max()) > 1e-3


@pytest.mark.parametrize("features", ["last", "penultimate", "changeable"])
def test_the_sampler_draws_the_law_the_objective_scores(features):
    """One step from all-mask (t = 0, dt = 1: every position lands) of a randomised chain
    student: the empirical frequency of each of the C^L outcomes matches exp(log P(y)) from the
    forward algorithm, and that law is not the product of its marginals."""
    length, n = 3, 20_000
    # a seed whose random chain is clearly correlated (the check below), so that the
    # frequencies could not match a product law by accident
    seed = 1 if features == "last" else 3
    student = tiny_chain(codes=3, length=length, scale=6.0, seed=seed, features=features).eval()
    outcomes = torch.tensor(list(itertools.product(range(C), repeat=length)))
    x = torch.full((len(outcomes), length), MASK)
    q = torch.ones(len(outcomes), dtype=torch.float64)
    with torch.no_grad():
        joint, _ = chain_log_likelihood(*log_likelihoods(student, x, outcomes, q))
    law = joint.exp()
    assert abs(float(law.sum()) - 1) < 1e-5
    draws = one_step(student, n, seed=3, length=length)
    index = (draws * torch.tensor([C**2, C, 1])).sum(1)
    freq = torch.bincount(index, minlength=len(outcomes)).double() / n
    se = (law.double() * (1 - law.double()) / n).sqrt()
    assert float(((freq - law) / se.clamp_min(1e-4)).abs().max()) < 5
    marg = [law.view(C, C, C).sum(dims) for dims in ((1, 2), (0, 2), (0, 1))]
    product = marg[0][:, None, None] * marg[1][None, :, None] * marg[2][None, None, :]
    assert float((law.view(C, C, C) - product).abs().sum() / 2) > 0.02  # correlated


def fit_chain(student, steps=150, batch=128):
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    x = torch.full((batch, 2), MASK)
    t, dt, q = torch.zeros(batch), torch.ones(batch), torch.ones(batch, dtype=torch.float64)
    for i in range(steps):
        target, y = composite_draws(batch, 100 + i)
        logits, log_trans = student.chain_terms(x, t, dt)
        marginal, corr, _ = chain_losses(
            logits, log_trans, target, x, y, q, x == MASK, "mask", MASK
        )
        opt.zero_grad()
        (marginal + corr).backward()
        opt.step()
    return student.eval()


def test_a_trained_chain_step_reproduces_the_correlation_a_product_step_cannot():
    unequal, selftv = unequal_and_selftv(one_step(fit_chain(tiny_chain(codes=4)), 8_000, seed=5))
    assert unequal < 0.35 and selftv > 0.15  # target 0.25 / 0.25; any product step: 0.5 / 0


def test_chain_student_round_trip_and_seeded_sampling(tmp_path):
    student = tiny_chain(codes=3, length=4, scale=1.0).eval()
    x0 = torch.full((32, 4), MASK)
    a = sample(student, x0, 3, LIN, "mask", MASK, torch.Generator().manual_seed(3)).ids
    b = sample(student, x0, 3, LIN, "mask", MASK, torch.Generator().manual_seed(3)).ids
    assert torch.equal(a, b)
    student.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["latent_codes"] == 3 and config["latent_chain"] is True
    loaded, _ = load_pretrained(tmp_path / "m")
    assert torch.equal(
        a, sample(loaded, x0, 3, LIN, "mask", MASK, torch.Generator().manual_seed(3)).ids
    )
    with pytest.raises(ValueError, match="uniform noise"):
        student(x0, torch.zeros(32), torch.ones(32), torch.zeros(32, dtype=torch.long))
    x, t, u = torch.tensor([[MASK] * 4, [0, MASK, 1, MASK]]), torch.zeros(2), torch.rand(2, 4)
    for features in ("penultimate", "changeable"):
        other = tiny_chain(codes=3, length=4, scale=1.0, features=features)
        other.save_pretrained(tmp_path / features)
        config = json.loads((tmp_path / features / "config.json").read_text())
        assert config["chain_features"] == features
        loaded, _ = load_pretrained(tmp_path / features)
        assert loaded.chain.features == features
        with torch.no_grad():
            assert torch.equal(other.eval()(x, t, t + 1, u), loaded(x, t, t + 1, u))


def test_changeable_features_read_the_head_where_a_token_can_move_and_the_relay_elsewhere():
    """``chain_features=changeable``: at masked positions the transitions are those of the same
    weights reading the head's features (``last``), at visible ones those reading the last
    block's input (``penultimate``); a change of the last block moves only the former."""
    student = tiny_chain(codes=3, length=4, scale=1.0, features="changeable").eval()
    x = torch.tensor([[MASK, 0, MASK, 1], [1, 1, MASK, MASK]])
    t = torch.zeros(2)
    masked = (x == MASK).unsqueeze(-1).unsqueeze(-1)
    with torch.no_grad():
        _, trans = student.chain_terms(x, t, t + 1)
        reads = {}
        for features in ("last", "penultimate"):
            student.chain.features = features
            reads[features] = student.chain_terms(x, t, t + 1)[1]
        student.chain.features = "changeable"
        torch.testing.assert_close(trans, torch.where(masked, *reads.values()))
        assert not torch.allclose(reads["last"], reads["penultimate"], atol=1e-3)
        for p in student.blocks[-1].parameters():  # the last block moves ...
            p.add_(torch.randn_like(p))
        moved = student.chain_terms(x, t, t + 1)[1]
    visible = ~masked.expand_as(trans)
    assert torch.equal(moved[visible], trans[visible])  # ... not the relay's transitions
    assert not torch.allclose(moved[~visible], trans[~visible], atol=1e-4)


def test_a_fresh_chain_student_is_near_its_teacher():
    student = tiny_chain(codes=4, length=4)
    teacher = tiny_chain(codes=0 or 2, length=4)  # same seed: same body and head
    x, t = torch.randint(0, C + 1, (5, 4)), torch.rand(5)
    with torch.no_grad():
        base = teacher.head(teacher.features(teacher.embed(x), t, t))
        p = torch.softmax(student(x, t, t, torch.rand(5, 4)), -1)
    assert float((p - torch.softmax(base, -1)).abs().max()) < 0.05


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_chain_objective_runs_on_both_sources(source):
    """One training call per source through ``MixtureObjective``: finite loss, gradients reach
    both the code offsets and the transitions, EMA targets drawn with a code chain per row."""
    from test_shortcut import tiny_teacher

    from tsdfm.config import StudentConfig
    from tsdfm.training.mixture import MixtureObjective

    teacher = tiny_teacher(source)
    student = build_student(teacher, latent_codes=3, latent_chain=True).train()
    cfg = StudentConfig(teacher_steps=8, kind="chain", latent_codes=3)
    obj = MixtureObjective(teacher, cfg, 8, 8, latent_codes=3, joint_weight=1.0, data_weight=0.5)
    obj.target_model = build_student(teacher, latent_codes=3, latent_chain=True).eval()
    x1 = torch.randint(0, 8, (6, 12), generator=torch.Generator().manual_seed(0))
    loss, metrics = obj(student, x1, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss)
    assert set(metrics) >= {"mix_marginal", "mix_corr", "mix_pmi", "mix_data_nll"}
    assert metrics["mix_data_nll"] > 0
    loss.backward()
    for p in (student.chain.shift, student.chain.scale, student.chain.unary.weight):
        assert float(p.grad.abs().sum()) > 0
    assert float(student.chain.pairwise.grad.abs().sum()) > 0


def test_chain_student_from_the_cli(run):  # noqa: F811
    """``--kind chain``: trains, records its kind, samples; K = 1 shaping is blind exactly."""
    import csv

    from test_shaping_cli import student_args

    from tsdfm.cli import main
    from tsdfm.generation import draw_samples

    root = run[0]
    blind, k1 = root / "chain-blind", root / "chain-k1"
    flags = ("--kind", "chain", "student.latent_codes=3")
    assert main(student_args(run, blind, *flags)) == 0
    assert main(student_args(run, k1, *flags, "--shaping", "oracle", "--candidates", "1")) == 0
    loss = lambda d: [r["loss"] for r in csv.DictReader(open(d / "log.csv"))]  # noqa: E731
    assert loss(blind) == loss(k1)
    cfg = json.loads((blind / "model" / "config.json").read_text())
    assert cfg["latent_chain"] and cfg["latent_codes"] == 3 and cfg["extra"]["kind"] == "chain"
    a = draw_samples(blind / "model", steps=4, num=6, seed=2, progress=False, device="cpu")
    b = draw_samples(blind / "model", steps=4, num=6, seed=2, progress=False, device="cpu")
    assert torch.equal(a.ids, b.ids) and a.ids.shape == (6, 16)


def test_joint_check_scores_only_pairs_committed_together(load_script):
    """studies/joint_check.py: PMI and off-chain rate over adjacent pairs masked at x_t and both
    committed by the step, computed by hand on a 3-symbol chain."""
    jc = load_script("joint_check")
    m = 3  # [MASK]
    trans = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.001, 0.001, 0.998]]).double()
    pi = torch.tensor([0.25, 0.25, 0.5]).double()
    x_t = torch.tensor([[m, m, m, 0], [m, m, 1, m]])
    y = torch.tensor([[0, 0, m, 0], [2, 0, 1, 1]])
    s = jc.pair_scores(x_t, y, trans.log(), pi.log(), m, floor=0.01)
    # counted: row 0 (0, 0) at 0-1; row 1 (2, 0) at 0-1. Not: pairs with a masked or seen end.
    want = [math.log(0.9 / 0.25), math.log(0.001 / 0.25)]
    assert s["pairs"] == 2
    assert s["pmi"] == pytest.approx(sum(want) / 2)
    assert s["off_chain"] == pytest.approx(0.5)


def test_the_parallel_code_draw_equals_the_sequential_one():
    """The prefix-scan draw of the code chain gives the codes of the one-position-at-a-time
    inverse-CDF loop, for lengths that are and are not powers of two."""
    student = tiny_chain(codes=5, length=13, scale=2.0, seed=3)
    for length in (1, 8, 13):
        h = torch.randn(7, length, 16)
        u = torch.rand(7, length, generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            fast, slow = student.chain.draw_codes(h, u), student.chain.draw_codes_sequential(h, u)
        assert 7 * 5**2 <= latent.SCAN_MAX_WORK  # draw_codes took the scan here
        assert torch.equal(fast, slow)
        assert len(set(fast.flatten().tolist())) > 1  # the codes do move


def test_the_code_draw_keeps_its_law_where_the_weights_would_underflow():
    """The weighted code draw factors a transition row as ``exp(A - max A) * exp(u_i - max
    u_i)``; with the maxima of ``A`` and ``u_i`` 200 nats apart every product of row 0 is 0 in
    float32 although its logits tie. Built so that ``z_0`` is uniform, row 0 is uniform and
    row 1 keeps code 1: ``P(z_1 = 0) = 1/4`` exactly, where the underflowed weights would
    give 0. The draw must detect it and take the normalised law, on both paths."""
    chain = latent.LatentChain(dim=2, codes=2)
    with torch.no_grad():
        chain.pairwise.copy_(torch.tensor([[0.0, -200.0], [-200.0, 0.0]]))
        chain.unary.weight.copy_(torch.tensor([[-200.0, 0.0], [0.0, 0.0]]))
        chain.unary.bias.zero_()
    n = 40_000
    h = torch.zeros(n, 2, 2)
    h[:, 1, 0] = 1.0  # u_0 = (0, 0), u_1 = (-200, 0)
    u = torch.rand(n, 2, generator=torch.Generator().manual_seed(0))
    assert chain._draw_weights(h)[0] is None  # the bound saw the underflow
    with torch.no_grad():
        scan = torch.cat([chain.draw_codes(h[a : a + 1], u[a : a + 1]) for a in range(2000)])
        loop = chain.draw_codes_sequential(h, u)
    assert torch.equal(scan, loop[:2000])
    assert abs(float((loop[:, 0] == 0).float().mean()) - 0.5) < 0.01
    assert abs(float((loop[:, 1] == 0).float().mean()) - 0.25) < 0.01
    with torch.no_grad():  # a table in range keeps the weighted draw
        chain.pairwise.copy_(torch.tensor([[0.0, -2.0], [-2.0, 0.0]]))
    assert chain._draw_weights(h)[0] is not None


def test_data_step_lands_clean_tokens_at_the_switch_rate():
    from tsdfm.training.mixture import data_step

    x1 = torch.randint(0, C, (4000, 8), generator=torch.Generator().manual_seed(0))
    x_t = torch.where(torch.rand(x1.shape) < 0.5, x1, torch.full_like(x1, MASK))
    q = torch.full((4000,), 0.3)
    y = data_step(x1, x_t, q, x_t == MASK, torch.Generator().manual_seed(1))
    assert torch.equal(y[x_t != MASK], x_t[x_t != MASK])  # visible positions never move
    landed = (x_t == MASK) & (y != MASK)
    assert torch.equal(y[landed], x1[landed])  # and land on the clean token
    rate = float(landed.sum() / (x_t == MASK).sum())
    assert abs(rate - 0.3) < 0.01


def test_the_data_term_alone_teaches_the_datas_joint():
    """On the {00, 11} data the true one-step law from all-mask (t = 0 -> 1) is the data
    itself: P(y1 != y2) = 0, where any product step has 1/2. A chain student trained on the
    data term alone (no teacher) gets there."""
    from tsdfm.training.mixture import data_step, joint_nll

    student = tiny_chain(codes=4)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    batch = 128
    x = torch.full((batch, 2), MASK)
    t, dt, q = torch.zeros(batch), torch.ones(batch), torch.ones(batch)
    for i in range(150):
        g = torch.Generator().manual_seed(i)
        x1 = torch.randint(0, 2, (batch, 1), generator=g).expand(batch, 2)
        y = data_step(x1, x, q, x == MASK, g)
        loss = joint_nll(student, x, t, dt, y, q.double(), x == MASK, "mask", MASK, 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    unequal, selftv = unequal_and_selftv(one_step(student.eval(), 8_000, seed=5))
    assert unequal < 0.1 and selftv > 0.35  # target 0 / 0.5; a product step: 0.5 / 0


def test_the_latent_head_learns_at_its_own_rate():
    """``student.latent_lr_scale``: the chain head's parameters get ``lr x scale`` through the
    warm-up and cosine, the body keeps ``lr``; every parameter is in exactly one group, and
    without scales the layout is the plain two groups (decay, no decay) checkpoints expect.
    One Adam step from the same gradients moves the transition table ``scale`` times further."""
    from tsdfm.config import TrainConfig
    from tsdfm.training.loop import make_optimizer, make_scheduler
    from tsdfm.training.student import LATENT_PREFIXES

    student = tiny_chain(codes=3, length=4, scale=1.0)
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, steps=100)
    plain = make_optimizer(student, cfg)
    assert [g["lr_scale"] for g in plain.param_groups] == [1.0, 1.0]
    assert [g["weight_decay"] for g in plain.param_groups] == [cfg.weight_decay, 0.0]
    opt = make_optimizer(student, cfg, {p: 30.0 for p in LATENT_PREFIXES})
    chain_ids = {id(p) for p in student.chain.parameters()}
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in student.parameters())
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= chain_ids if g["lr_scale"] == 30.0 else not ids & chain_ids
    sched = make_scheduler(opt, cfg)
    for _ in range(5):
        opt.step()
        sched.step()
    rates = {g["lr_scale"]: g["lr"] for g in opt.param_groups}
    assert rates[30.0] == pytest.approx(30 * rates[1.0])

    def moved(scale):
        model = tiny_chain(codes=3, length=4, scale=1.0)
        before = model.chain.pairwise.detach().clone()
        x = torch.full((8, 4), MASK)
        logits, log_trans = model.chain_terms(x, torch.zeros(8), torch.ones(8))
        (logits.pow(2).mean() + log_trans.exp().pow(2).mean()).backward()
        opt = make_optimizer(model, cfg, {"chain.": scale})
        opt.step()
        return float((model.chain.pairwise.detach() - before).abs().max())

    assert moved(30.0) == pytest.approx(30 * moved(1.0), rel=1e-3)


def test_latent_lr_scale_is_refused_where_it_means_nothing():
    from tsdfm.config import StudentConfig
    from tsdfm.errors import TsdfmError

    with pytest.raises(TsdfmError, match="latent_lr_scale.*kind=chain"):
        StudentConfig(latent_lr_scale=10).validate()
    with pytest.raises(TsdfmError, match="latent_lr_scale must be > 0"):
        StudentConfig(kind="chain", latent_codes=4, latent_lr_scale=0).validate()
    StudentConfig(kind="chain", latent_codes=4, latent_lr_scale=30).validate()
    with pytest.raises(TsdfmError, match="chain_features.*kind=chain"):
        StudentConfig(kind="mixture", chain_features="penultimate").validate()
    with pytest.raises(TsdfmError, match="chain_features"):
        StudentConfig(kind="chain", chain_features="first").validate()
    StudentConfig(kind="chain", chain_features="penultimate").validate()
    StudentConfig(kind="chain", chain_features="changeable").validate()


def test_a_chain_student_with_a_scaled_head_resumes_exactly(run):  # noqa: F811
    """The latent head's own optimizer groups survive a checkpoint: a run stopped at step 2 and
    resumed ends with the losses and weights of the uninterrupted run (a resume that rebuilt the
    groups at the body's rate would move the head 30x less from step 3 on)."""
    import csv

    from safetensors.torch import load_file
    from test_shaping_cli import student_args

    from tsdfm.cli import main

    root = run[0]
    flags = ("--kind", "chain", "student.latent_codes=3", "student.latent_lr_scale=30")
    more = ("student.train.steps=4", "student.train.ckpt_every=2", "student.train.eval_every=4")
    full, parts = root / "chain-lr-full", root / "chain-lr-parts"
    assert main([*student_args(run, full, *flags), *more]) == 0
    assert main([*student_args(run, parts, *flags), *more, "student.train.stop_at_step=2"]) == 0
    assert main([*student_args(run, parts, *flags), *more, "--resume"]) == 0
    loss = lambda d: [r["loss"] for r in csv.DictReader(open(d / "log.csv"))]  # noqa: E731
    assert len(loss(full)) == 4 and loss(parts) == loss(full)
    a, b = (load_file(d / "model" / "model.safetensors") for d in (full, parts))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a resume that changes lr replays the schedule: every group, the head included, then has
    # the rate a fresh run of the new config has at that step
    longer = ("student.train.steps=8", "student.train.ckpt_every=2", "student.train.eval_every=8")
    fresh, changed = root / "chain-lr-fresh", root / "chain-lr-changed"
    stop = lambda n: f"student.train.stop_at_step={n}"  # noqa: E731
    new_lr = "student.train.lr=2e-3"
    assert main([*student_args(run, fresh, *flags), *longer, new_lr, stop(4)]) == 0
    assert main([*student_args(run, changed, *flags), *longer, stop(2)]) == 0
    assert main([*student_args(run, changed, *flags), *longer, new_lr, stop(4), "--resume"]) == 0

    def rates(d):
        ckpt = torch.load(d / "checkpoints" / "step_0000004.pt", weights_only=True)
        return {g["lr_scale"]: g["lr"] for g in ckpt["optimizer"]["param_groups"]}

    assert rates(changed) == pytest.approx(rates(fresh))
    assert rates(fresh)[30.0] > 10 * rates(fresh)[1.0]


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_the_head_at_changeable_positions_gives_the_losses_of_the_full_head(source):
    """Training runs the chain's head only where the step can change a token
    (``chain_terms(..., positions=changeable)``): the losses and the data term are the numbers
    the head at every position gives, and the gradients agree to float rounding (the head's
    weight gradient sums fewer rows)."""
    from tsdfm.training.mixture import joint_log_likelihood

    student = tiny_chain(codes=3, length=6, scale=2.0, seed=4).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, C, (10, 6), generator=g)
    if source == "mask":
        x = torch.where(torch.rand(x.shape, generator=g) < 0.6, torch.full_like(x, MASK), x)
    changeable = x == MASK if source == "mask" else torch.ones_like(x, dtype=torch.bool)
    assert 0 < int(changeable.sum()) < x.numel() or source == "uniform"
    y = torch.where(changeable, torch.randint(0, C, x.shape, generator=g), x)
    t, dt = torch.rand(10, generator=g) * 0.5, torch.full((10,), 0.25)
    q = torch.full((10,), 0.4, dtype=torch.float64)
    target = torch.log_softmax(torch.randn(10, 6, C, generator=g), -1)

    def losses(positions):
        student.zero_grad()
        logits, log_trans = student.chain_terms(x, t, dt, positions=positions)
        out = chain_losses(logits, log_trans, target, x, y, q, changeable, source, MASK)
        data = joint_log_likelihood(logits, log_trans, x, y, q, changeable, source, MASK)
        (out[0] + out[1] - data.sum()).backward()
        grads = {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}
        return [*out, data.detach()], grads

    full, full_grads = losses(None)
    at, at_grads = losses(changeable)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(full, at, strict=True))
    assert float(full[1].detach()) != 0.0  # the correlation term is live
    for name, grad in full_grads.items():
        scale = float(grad.abs().max())
        assert float((at_grads[name] - grad).abs().max()) <= 1e-5 * scale, name
    log_trans = student.chain_terms(x, t, dt)[1].detach()
    with pytest.raises(ValueError, match="positions=changeable"):  # logits at other positions
        chain_losses(torch.zeros(1, 3, C), log_trans, target, x, y, q, changeable, source, MASK)
