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
    from tsdfm.evaluation.oracle_gap import oracle_gap

    chain = MarkovChain(vocab_size=8, order=1, alpha=0.3, eps=0.02, seed=3)
    oracle = MarkovOracleDenoiser(chain, 12)
    oracle.config = tiny_teacher().config  # the gap reads the path's settings from .config
    x1 = torch.from_numpy(chain.sample(64, 12, seed=2)).long()
    zero = oracle_gap(oracle, oracle, x1, [8, 2], torch.Generator().manual_seed(0))
    assert all(abs(v) < 1e-9 for way in zero.values() for v in way.values())
    net = oracle_gap(tiny_teacher(), oracle, x1, [8, 2], torch.Generator().manual_seed(0))
    assert all(v > 0.01 for way in ("forward", "reverse") for v in net[way].values())
    assert set(net) == {"forward", "reverse", "flatness"} and set(net["reverse"]) == {8, 2}
    # an untrained network is near uniform: flatter than the chain's posterior
    assert all(v > 0 for v in net["flatness"].values())


def test_oracle_gap_script(tmp_path, load_script):
    from tsdfm.data import prepare_data
    from tsdfm.data.spec import DataSpec, MarkovSpec

    data = tmp_path / "data"
    markov = MarkovSpec(vocab_size=8, alpha=0.3, num_train=32, num_valid=8, num_test=8)
    tok = prepare_data(DataSpec(corpus="markov", seq_len=12, markov=markov), data).tokenizer
    teacher = tiny_teacher()
    teacher.config.tokenizer_fingerprint = tok.fingerprint()
    teacher.save_pretrained(tmp_path / "t" / "model", tokenizer=tok)
    script = load_script("oracle_gap")
    args = ["--data", str(data), "--model", f"t={tmp_path / 't'}", "--steps", "4", "1"]
    assert script.main([*args, "--num", "16", "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "oracle_gap.md").read_text()
    assert all(f"| t | {way} | " in table for way in ("forward", "reverse", "flatness"))
    assert "S = 4" in table
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
    assert script.main([*args, "--methods", "rk4", "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "target_bias.json").read_text())["rows"]
    gap = {(r["space"], r["reps"]): r["gap"] for r in rows}
    assert gap["probs", 64]["forward"]["2"] < gap["probs", 2]["forward"]["2"] / 8
    assert abs(gap["probs", 64]["flatness"]["2"]) < 0.01
    # deterministic given the seeds; measured -0.009 (logits) vs ~0 (probs)
    assert gap["logits", 64]["flatness"]["2"] < min(-0.004, gap["probs", 64]["flatness"]["2"])
    assert "| rk4/probs | 64 | flatness |" in (tmp_path / "out" / "target_bias.md").read_text()
    assert script.main([*args, "--reps", "0", "--out", str(tmp_path / "x")]) == 2
