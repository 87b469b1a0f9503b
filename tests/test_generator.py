"""Generation API and ``tsdfm generate``: clamped prompts/templates, errors, step display."""

import subprocess
import sys

import pytest
import torch

from tsdfm.cli import main
from tsdfm.data.tokenizer import Tokenizer
from tsdfm.errors import TsdfmError
from tsdfm.generator import Generator, show_steps
from tsdfm.models import CausalConfig, CausalLM, Denoiser, DenoiserConfig, build_student

V, L = 8, 12  # identity tokenizer: ids 0..7 are the text "0".."7", [MASK] = 8


def _denoiser(source: str = "mask") -> Denoiser:
    torch.manual_seed(0)
    cfg = DenoiserConfig(
        vocab_size=V + 1, num_classes=V, max_len=L, dim=32, n_layers=1, n_heads=2,
        time_cond=source == "uniform", source=source,
    )  # fmt: skip
    return Denoiser(cfg)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root, tok = tmp_path_factory.mktemp("models"), Tokenizer.identity(V)
    _denoiser("mask").save_pretrained(root / "teacher" / "model", tokenizer=tok)  # a run dir
    _denoiser("uniform").save_pretrained(root / "uniform", tokenizer=tok)
    build_student(_denoiser("mask")).save_pretrained(root / "student", tokenizer=tok)
    ar = CausalLM(CausalConfig(V + 1, V, L, dim=32, n_layers=1, n_heads=2))
    ar.save_pretrained(root / "ar", tokenizer=tok)
    return {k: root / k for k in ("teacher", "uniform", "student", "ar")}


def _frames(g: Generator, steps: int, **kw) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every intermediate batch the sampler produced, and the final ids."""
    seen: list[torch.Tensor] = []
    _, ids = g.generate(
        3, steps, return_ids=True, callback=lambda k, x: seen.append(x.clone()), **kw
    )
    assert len(seen) == steps and torch.equal(seen[-1], ids)
    return seen, ids


@pytest.mark.parametrize("model", ["teacher", "uniform", "student"])
def test_prefix_prompt_never_changes(dirs, model):
    g = Generator.from_pretrained(dirs[model])
    frames, ids = _frames(g, 6, prompt="3 1 4")
    for x in frames:
        assert (x[:, :3] == torch.tensor([3, 1, 4])).all()
    assert (ids != g.mask_id).all() and ids.shape == (3, L)
    if model != "uniform":  # mask source: the free positions start masked and fill up
        masked = [int((x == g.mask_id).sum()) for x in frames]
        assert masked == sorted(masked, reverse=True) and masked[-1] == 0


@pytest.mark.parametrize("model", ["teacher", "uniform"])
def test_infill_positions_never_change(dirs, model):
    g = Generator.from_pretrained(dirs[model])
    frames, ids = _frames(g, 5, infill="2 [MASK] [MASK] 5", suffix="7 6")
    given = {0: 2, 3: 5, L - 2: 7, L - 1: 6}
    for x in frames:
        for pos, tok in given.items():
            assert (x[:, pos] == tok).all()
    frames, _ = _frames(g, 3, infill=[None, 1, None, 0])
    assert all((x[:, 1] == 1).all() and (x[:, 3] == 0).all() for x in frames)


def test_same_seed_same_text_and_cache_does_not_change_samples(dirs):
    g = Generator.from_pretrained(dirs["teacher"])
    a = g.generate(4, 16, seed=3, prompt="1")
    assert a == g.generate(4, 16, seed=3, prompt="1", cache=False)
    assert a != g.generate(4, 16, seed=4, prompt="1")
    assert g.last_stats["nfe_nominal"] == 16 and all(t.startswith("1 ") for t in a)
    assert len(g.generate(5, 2, batch_size=2)) == 5


def test_errors_name_the_problem(dirs, tmp_path):
    g = Generator.from_pretrained(dirs["teacher"])
    with pytest.raises(TsdfmError, match="longer than the sequence length 12"):
        g.generate(1, prompt=" ".join(["1"] * (L + 1)))
    with pytest.raises(TsdfmError, match="longer than the sequence length 4"):
        g.generate(1, prompt="1 2 3", suffix="4 5", seq_len=4)
    for bad in (0, -1, 2.5):
        with pytest.raises(TsdfmError, match="steps must be an integer >= 1"):
            g.generate(1, steps=bad)
    with pytest.raises(TsdfmError, match="larger than the model's length"):
        g.generate(1, seq_len=L + 1)
    with pytest.raises(TsdfmError, match="not both"):
        g.generate(1, prompt="1", infill="[MASK] 2")
    with pytest.raises(TsdfmError, match="no \\[MASK\\]"):
        g.generate(1, infill="1 2")
    with pytest.raises(TsdfmError, match="contains \\[MASK\\]"):
        g.generate(1, prompt="1 [MASK]")
    with pytest.raises(TsdfmError, match="model directory not found"):
        Generator.from_pretrained(tmp_path / "nope")
    with pytest.raises(TsdfmError, match="not a tsdfm model directory"):
        Generator.from_pretrained(tmp_path)


def test_causal_lm_continues_a_prefix_only(dirs):
    g = Generator.from_pretrained(dirs["ar"])
    texts, ids = g.generate(3, prompt="5 6", return_ids=True)
    assert (ids[:, :2] == torch.tensor([5, 6])).all() and ids.shape == (3, L)
    assert all(t.startswith("5 6 ") for t in texts)
    with pytest.raises(TsdfmError, match="only continue a prefix"):
        g.generate(1, infill="1 [MASK] 3")
    with pytest.raises(TsdfmError, match="only continue a prefix"):
        g.generate(1, suffix="3")
    with pytest.raises(TsdfmError, match="top_k"):
        g.generate(1, top_k=2)


def test_causal_prefix_kv_cache_matches_recompute():
    torch.manual_seed(1)
    m = CausalLM(CausalConfig(V + 1, V, L, dim=32, n_layers=2, n_heads=2)).eval()
    prefix = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = [
        m.generate(2, L, torch.Generator().manual_seed(0), use_cache=c, prefix=prefix)
        for c in (True, False)
    ]
    assert torch.equal(out[0], out[1]) and torch.equal(out[0][:, :3], prefix)
    plain = m.generate(2, L, torch.Generator().manual_seed(0))
    assert plain.shape == (2, L)


def test_show_steps_prints_fewer_masks_each_frame(dirs):
    g = Generator.from_pretrained(dirs["teacher"])
    lines: list[str] = []
    texts = show_steps(g, 2, 64, max_frames=8, write=lines.append, prompt="1 2")
    masked = [ln.count("_") for ln in lines]
    assert len(texts) == 2 and 3 <= len(lines) <= 8 + 1
    assert masked[0] == L - 2 and masked[-1] == 0
    assert all(a >= b for a, b in zip(masked, masked[1:], strict=False)) and len(set(masked)) >= 3
    assert lines[0].startswith("step  0/64 (10 masked): 1 2 _")
    assert lines[-1].endswith(texts[0]) and lines[-1].startswith("step 64/64")


def test_show_steps_on_a_causal_lm(dirs):
    g = Generator.from_pretrained(dirs["ar"])
    lines: list[str] = []
    show_steps(g, 1, write=lines.append, prompt="3")
    masked = [ln.count("_") for ln in lines]
    assert masked == list(range(L - 1, -1, -1))  # one new token per step


def test_cli_generate(dirs, capsys):
    assert main(["generate", "--model", str(dirs["teacher"]), "--prompt", "4 4", "--num", "2",
                 "--steps", "8", "--show-steps"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    frames = [ln for ln in out if ln.startswith("step")]
    samples = [ln for ln in out if ln.startswith("- ")]
    assert frames[0].count("_") == L - 2 and frames[-1].count("_") == 0 and len(samples) == 2
    assert all(s.startswith("- 4 4 ") for s in samples)
    assert main(["generate", "--model", str(dirs["ar"]), "--infill", "[MASK] 1"]) == 2
    assert "only continue a prefix" in capsys.readouterr().err


def test_bpe_infill_template_drops_spaces_before_masks():
    tok = Tokenizer.train_bpe(["the cat sat on the mat"] * 20, vocab_size=260)
    model = Denoiser(DenoiserConfig(tok.vocab_size, tok.num_classes, 16, 32, 1, 2))
    g = Generator(model, tok)
    ids = g._infill_ids("the cat [MASK] [MASK] on the mat")
    first = ids.index(None)
    assert ids[first + 1] is None
    assert tok.decode(ids[:first]) == "the cat" and tok.decode(ids[first + 2 :]) == " on the mat"
    assert g.render([*tok.encode("the cat"), tok.mask_id]) == "the cat_"


def test_import_tsdfm_stays_cheap():
    import tsdfm

    assert tsdfm.Generator is Generator
    code = "import sys, tsdfm; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
