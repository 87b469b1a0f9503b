"""``student.anchor=oracle``: the dt = 1/N rows imitate the markov chain's exact denoiser.

This is the near-exact-teacher check of issue 4: the anchor must be the oracle's posterior
exactly (not the teacher network's) and it must refuse the settings where no exact denoiser
exists (real text); with the uniform source it is the forward-backward posterior through the
teacher's own scheduler. The CLI run is in ``test_shaping_cli.py``.
"""

import json
from types import SimpleNamespace

import pytest
import torch
from test_shortcut import tiny_teacher  # V = 8 symbols + [MASK], L = 12

from tsdfm.config import StudentConfig
from tsdfm.data.markov import MarkovChain
from tsdfm.errors import TsdfmError
from tsdfm.models.oracle import MarkovOracleDenoiser, MarkovUniformOracleDenoiser
from tsdfm.training.objectives import ShortcutObjective
from tsdfm.training.student import exact_anchor


def test_anchor_rows_are_the_exact_posterior():
    chain = MarkovChain(vocab_size=8, order=1, alpha=0.3, eps=0.02, seed=3)
    teacher, oracle = tiny_teacher(), MarkovOracleDenoiser(chain, 12)
    n = 16
    obj = ShortcutObjective(teacher, StudentConfig(teacher_steps=n), 8, 8, anchor=oracle)
    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(chain.sample(6, 12, seed=1))
    x_t = torch.where(torch.rand(6, 12, generator=gen) < 0.6, torch.full_like(x, 8), x)
    t, dt = torch.full((6,), 0.25), torch.full((6,), 1.0 / n)
    target, anchor = obj.targets(x_t, t, dt, gen)
    assert anchor.all()
    want = torch.log_softmax(oracle(x_t, t, dt).float(), dim=-1)
    torch.testing.assert_close(target, want)
    # and it is not what the (untrained) teacher network says
    plain = ShortcutObjective(teacher, StudentConfig(teacher_steps=n), 8, 8)
    masked = x_t == 8
    assert not torch.allclose(plain.targets(x_t, t, dt, gen)[0][masked], want[masked], atol=1e-2)


def test_exact_anchor_refuses_text_and_follows_the_teachers_source():
    text = SimpleNamespace(chain=lambda: None, directory="runs/x/data", seq_len=12)
    with pytest.raises(TsdfmError, match="markov corpus"):
        exact_anchor(tiny_teacher(), text)
    chain = MarkovChain(vocab_size=8, order=1, alpha=0.3, eps=0.02, seed=0)
    markov = SimpleNamespace(chain=lambda: chain, directory="runs/m/data", seq_len=12)
    assert isinstance(exact_anchor(tiny_teacher(), markov), MarkovOracleDenoiser)
    uniform = exact_anchor(tiny_teacher("uniform"), markov)
    assert isinstance(uniform, MarkovUniformOracleDenoiser)
    # it reads the noise level from t: no signal at t = 0 (the stationary law), a point mass at 1
    x = torch.from_numpy(chain.sample(2, 12, seed=0))
    p0 = uniform(x, torch.zeros(2)).exp()
    torch.testing.assert_close(
        p0[0, 0].double(), torch.from_numpy(chain.stationary), atol=1e-5, rtol=0
    )
    assert bool((uniform(x, torch.ones(2)).argmax(-1) == x).all())


def test_config_rejects_an_unknown_anchor():
    with pytest.raises(TsdfmError, match="anchor"):
        StudentConfig(anchor="ema").validate()


def test_oracle_gap_is_zero_for_the_oracle_and_positive_for_a_network():
    from studylib.oracle_gap import oracle_gap

    chain = MarkovChain(vocab_size=8, order=1, alpha=0.3, eps=0.02, seed=3)
    oracle = MarkovOracleDenoiser(chain, 12)
    oracle.config = tiny_teacher().config  # the gap reads the path's settings from .config
    x1 = torch.from_numpy(chain.sample(64, 12, seed=2)).long()
    zero = oracle_gap(oracle, oracle, x1, [8, 2], torch.Generator().manual_seed(0))
    ways = ("forward", "reverse", "flatness")
    assert all(abs(v) < 1e-9 for way in ways for v in zero[way].values())
    net = oracle_gap(tiny_teacher(), oracle, x1, [8, 2], torch.Generator().manual_seed(0))
    assert all(v > 0.01 for way in ("forward", "reverse") for v in net[way].values())
    assert set(net) == {*ways, "forward_by_time"} and set(net["reverse"]) == {8, 2}
    # an untrained network is near uniform: flatter than the chain's posterior
    assert all(v > 0 for v in net["flatness"].values())


def test_oracle_gap_uniform_source_scores_every_position_and_splits_by_time():
    """Uniform source: the exact posterior comes through the model's scheduler, no position is
    masked, so the average runs over all of them; the per-time split averages back to the total."""
    from studylib.oracle_gap import oracle_gap

    chain = MarkovChain(vocab_size=8, order=1, alpha=0.3, eps=0.02, seed=3)
    net = tiny_teacher("uniform")
    oracle = exact_anchor(net, SimpleNamespace(chain=lambda: chain, seq_len=12, directory="d"))
    assert isinstance(oracle, MarkovUniformOracleDenoiser)
    oracle.config = net.config
    x1 = torch.from_numpy(chain.sample(64, 12, seed=2)).long()
    zero = oracle_gap(oracle, oracle, x1, [4], torch.Generator().manual_seed(0))
    assert abs(zero["forward"][4]) < 1e-9 and abs(zero["reverse"][4]) < 1e-9
    gap = oracle_gap(net, oracle, x1, [4], torch.Generator().manual_seed(0))
    assert gap["forward"][4] > 0.01
    by_time = gap["forward_by_time"][4]
    assert len(by_time) == 4 and all(v is None or v > 0 for v in by_time)
    # every sequence scores all 12 positions, so the total is the count-weighted mean of the split
    k = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(k, minlength=4).double()
    mean = sum(float(n) * v for n, v in zip(counts, by_time, strict=True) if v is not None) / 64
    assert abs(mean - gap["forward"][4]) < 1e-9


def test_composite_step_is_stickier_than_the_posterior_at_the_start():
    """At t = 0 the uniform source shows pure noise: the exact posterior puts only the
    stationary mass on the current token, the composed fine chain (a distilled student's ideal)
    measurably more; a mask-source model has no such measure."""
    from studylib.oracle_gap import current_token_mass

    chain = MarkovChain(vocab_size=8, order=1, alpha=0.3, eps=0.02, seed=3)
    net = tiny_teacher("uniform")
    oracle = exact_anchor(net, SimpleNamespace(chain=lambda: chain, seq_len=12, directory="d"))
    oracle.config = net.config
    x1 = torch.from_numpy(chain.sample(512, 12, seed=2)).long()
    post = current_token_mass(oracle, x1, 2, torch.Generator().manual_seed(0))
    comp = current_token_mass(
        oracle, x1, 2, torch.Generator().manual_seed(0), composite=(oracle, 8, 4)
    )
    # the posterior at t = 0 is the stationary law pi; over uniform noise, E[pi(x_t)] = 1 / V
    assert abs(post[0] - 1 / 8) < 0.01
    assert comp[0] > post[0] + 0.03
    with pytest.raises(TsdfmError, match="uniform-source"):
        current_token_mass(tiny_teacher(), x1, 2, torch.Generator())


def test_oracle_gap_script(tmp_path, load_script):
    from tsdfm.data import prepare_data
    from tsdfm.data.spec import DataSpec, MarkovSpec

    data = tmp_path / "data"
    markov = MarkovSpec(vocab_size=8, alpha=0.3, num_train=32, num_valid=8, num_test=8)
    tok = prepare_data(DataSpec(corpus="markov", seq_len=12, markov=markov), data).tokenizer
    teacher = tiny_teacher()
    teacher.config.tokenizer_fingerprint = tok.fingerprint()
    teacher.save_pretrained(tmp_path / "t" / "model", tokenizer=tok)
    uniform = tiny_teacher("uniform")
    uniform.config.tokenizer_fingerprint = tok.fingerprint()
    uniform.save_pretrained(tmp_path / "u" / "model", tokenizer=tok)
    script = load_script("oracle_gap")
    args = ["--data", str(data), "--model", f"t={tmp_path / 't'}", "--steps", "4", "1"]
    args += ["--model", f"u={tmp_path / 'u'}"]
    assert script.main([*args, "--num", "16", "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "oracle_gap.md").read_text()
    assert all(f"| {m} | {way} | " in table for m in "tu" for way in ("forward", "reverse"))
    assert "S = 4" in table and "t = 0/1" in table  # no S = 8 given: the smallest is split
    assert script.main([*args, "--num", "16", "--by-time", "4", "--out", str(tmp_path / "o")]) == 0
    assert "t = 3/4" in (tmp_path / "o" / "oracle_gap.md").read_text()
    with pytest.raises(SystemExit):
        script.main([*args, "--by-time", "8", "--out", str(tmp_path / "o")])
    # uniform-source stickiness beside the exact posterior and the composed fine chain
    keep = ["--by-time", "4", "--keep", "8", "2", "--out", str(tmp_path / "k")]
    assert script.main([*args, "--num", "16", *keep]) == 0
    table = (tmp_path / "k" / "oracle_gap.md").read_text()
    assert "| exact posterior | " in table and "| exact composite 8 | " in table
    assert (
        "| u | " in table.split("current token")[1]
        and "| t | " not in table.split("current token")[1]
    )
    with pytest.raises(SystemExit):
        script.main([*args, "--by-time", "4", "--keep", "6", "2", "--out", str(tmp_path / "k")])
    rows = json.loads((tmp_path / "out" / "oracle_gap.json").read_text())["rows"]
    assert rows["u"]["source"] == "uniform" and rows["u"]["gap"]["forward"]["4"] > 0
    assert script.main(["--data", str(data), "--model", "nonsense", "--out", str(tmp_path)]) == 2


def test_target_bias_script(tmp_path, load_script):
    """Driven by the exact denoiser, the probability-mixture link is unbiased (its error is
    sampling noise that falls with R), while the logit average is sharper than the posterior."""
    from tsdfm.data import prepare_data
    from tsdfm.data.spec import DataSpec, MarkovSpec

    data = tmp_path / "data"
    markov = MarkovSpec(vocab_size=8, alpha=0.3, num_train=32, num_valid=8, num_test=8)
    prepare_data(DataSpec(corpus="markov", seq_len=12, markov=markov), data)
    script = load_script("target_bias")
    args = ["--data", str(data), "--steps", "2", "--reps", "2", "64", "--num", "32"]
    assert script.main([*args, "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "target_bias.json").read_text())["rows"]
    gap = {
        (r["space"], r["reps"]): r["gap"]
        for r in rows
        if r["method"] != "heun" or r["space"] == "probs"
    }
    assert gap["probs", 64]["forward"]["2"] < gap["probs", 2]["forward"]["2"] / 8
    assert abs(gap["probs", 64]["flatness"]["2"]) < 0.01
    # deterministic given the seeds; measured -0.009 (logits) vs ~0 (probs)
    assert gap["logits", 64]["flatness"]["2"] < min(-0.004, gap["probs", 64]["flatness"]["2"])
    assert "| heun/probs | 64 | flatness |" in (tmp_path / "out" / "target_bias.md").read_text()
    assert script.main([*args, "--reps", "0", "--out", str(tmp_path / "x")]) == 2
