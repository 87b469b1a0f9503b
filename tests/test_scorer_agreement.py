"""studies/scorer_agreement.py: rank agreement between compasses and evaluators."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tsdfm.data import load_prepared
from tsdfm.generation import SampleSet, write_samples
from tsdfm.models import CausalConfig, CausalLM

WORDS = "the a cat dog bird sat ran on under mat tree red blue big small".split()


def test_spearman_by_hand_and_on_independent_draws(load_script):
    sp = load_script("scorer_agreement").spearman
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert sp(a, a * 10 + 3) == pytest.approx(1.0)
    assert sp(a, -a) == pytest.approx(-1.0)
    # one swapped pair: 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 12 / 60
    assert sp(a, np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    rng = np.random.default_rng(0)
    assert abs(sp(rng.normal(size=4000), rng.normal(size=4000))) < 0.05
    assert np.isnan(sp(a[:2], a[:2]))


def test_within_row_agreement_removes_what_rows_share(load_script):
    """Two scorers that agree only on which *row* is better (a shared per-row offset, private
    per-sample noise) correlate when pooled, not within rows: the within-row figure is the one
    that speaks for selecting among candidates of one state."""
    agreement = load_script("scorer_agreement").agreement
    rng = np.random.default_rng(1)
    rows = {}
    for r, offset in enumerate([0.0, 5.0, 10.0]):
        rows[f"r{r}"] = {
            "s": offset + rng.normal(size=300),
            "t": offset + rng.normal(size=300),
            "u": offset + 0.0,  # filled below
        }
        rows[f"r{r}"]["u"] = -rows[f"r{r}"]["s"]
    pairs = {a["pair"]: a for a in agreement(rows)}
    assert abs(pairs["s", "t"]["within"]) < 0.15 and pairs["s", "t"]["pooled"] > 0.7
    assert pairs["s", "u"]["within"] == pytest.approx(-1.0)
    lo, hi = pairs["s", "u"]["within_range"]
    assert lo == pytest.approx(-1.0) and hi == pytest.approx(-1.0)


def _lm(data, seed: int) -> CausalLM:
    torch.manual_seed(seed)
    tok = data.tokenizer
    cfg = CausalConfig(
        vocab_size=tok.vocab_size,
        num_classes=tok.num_classes,
        max_len=data.seq_len,
        dim=16,
        n_layers=1,
        n_heads=2,
        tokenizer_fingerprint=tok.fingerprint(),
    )
    return CausalLM(cfg).eval()


def test_script_scores_every_row_and_a_scorer_agrees_with_itself(
    tmp_path, load_script, prepare_texts
):
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) for _ in range(300)]
    data = load_prepared(prepare_texts(corpus))
    _lm(data, 0).save_pretrained(tmp_path / "compass" / "model", tokenizer=data.tokenizer)
    _lm(data, 1).save_pretrained(tmp_path / "judge", tokenizer=data.tokenizer)
    meta = {"tokenizer_fingerprint": data.tokenizer.fingerprint(), "steps": 8}
    ids = torch.as_tensor(np.asarray(data.split("train")[:24]))
    samples = write_samples(
        tmp_path / "student_8.jsonl", SampleSet(ids, data.tokenizer.decode_batch(ids), meta)
    )
    out = tmp_path / "agreement.md"
    script = load_script("scorer_agreement")
    argv = ["--data", str(tmp_path / "data"), "--samples", str(samples), "--out", str(out)]
    scorers = [f"c={tmp_path / 'compass'}", f"j={tmp_path / 'judge'}", f"c2={tmp_path / 'compass'}"]
    assert script.main([*argv, "--scorers", *scorers, "--num-ref", "16"]) == 0
    text = out.read_text()
    ppl_rows = [ln for ln in text.splitlines() if ln.startswith(("| student_8", "| held-out"))]
    assert len(ppl_rows) == 2
    c, j, c2 = (float(x.replace(",", "")) for x in ppl_rows[0].strip("| ").split(" | ")[1:])
    assert c == pytest.approx(c2) and c != pytest.approx(j)  # random LMs: perplexity ~ vocab
    same = next(ln for ln in text.splitlines() if ln.startswith("| c / c2 "))
    assert "| 1.00 (1.00..1.00) | 1.00 |" in same
    # two random LMs share little taste (small samples: the mean's spread is wide); per byte
    # they agreed at 0.98, ranking the decoded samples by how many bytes their tokens spell
    other = next(ln for ln in text.splitlines() if ln.startswith("| c / j "))
    assert float(other.split(" | ")[1].split()[0]) < 0.9


def test_script_needs_two_scorers(tmp_path, load_script, capsys):
    script = load_script("scorer_agreement")
    argv = ["--data", str(tmp_path), "--samples", "x.jsonl", "--scorers", "a=b", "--out", "o.md"]
    assert script.main(argv) == 2
    assert "at least two" in capsys.readouterr().out
