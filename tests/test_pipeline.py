"""The one-command pipeline on a tiny markov config: every stage, then a re-run skips them all."""

import json

import pytest

from tsdfm.config import load_config
from tsdfm.pipeline import describe_stages, run_pipeline

OVERRIDES = [
    "data.corpus=markov",
    "data.seq_len=12",
    "data.markov={vocab_size: 6, order: 1, alpha: 0.3, num_train: 128, num_valid: 16, num_test: 32}",
    "teacher.model={dim: 32, n_layers: 1, n_heads: 2}",
    "teacher.train={steps: 4, batch_size: 8, eval_every: 4, ckpt_every: 4}",
    "compass.model={dim: 16, n_layers: 1, n_heads: 2}",
    "compass.train={steps: 2, batch_size: 8, eval_every: 2, ckpt_every: 2}",
    "ar_baseline.model={dim: 16, n_layers: 1, n_heads: 2}",
    "ar_baseline.train={steps: 2, batch_size: 8, eval_every: 2, ckpt_every: 2}",
    "student.teacher_steps=8",
    "student.train={steps: 3, batch_size: 4, eval_every: 3, ckpt_every: 3}",
    "student.shaping={candidates: 2, compass: ar}",
    "evaluation={num_samples: 8, batch_size: 8, teacher_steps: [8, 2], student_steps: [2]}",
]


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_skips(tmp_path, capsys):
    cfg = load_config(None, OVERRIDES)
    assert describe_stages(cfg) == [
        "data",
        "teacher",
        "compass",
        "ar",
        "student-blind",
        "student-shaped",
        "samples",
        "report",
    ]
    text = load_config(None, ["evaluation.evaluators=[ar-large, smollm2-135m]"])
    assert "evaluator-large" in describe_stages(text)
    assert "evaluator-small" not in describe_stages(text)  # only the evaluators asked for train
    run_pipeline(cfg, tmp_path, progress=False)
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    methods = [(r["method"], r["steps"]) for r in results["rows"]]
    assert ("data", None) in methods or any(m == "data" for m, _ in methods)
    assert ("teacher", 8) in methods and ("blind", 2) in methods and ("shaped", 2) in methods
    assert any(m == "ar" for m, _ in methods)
    assert "truth" in results["evaluators"]
    # the cached teacher row at the most steps carries the uncached time too, and speed-ups
    t8 = next(r for r in results["rows"] if (r["method"], r["steps"]) == ("teacher", 8))
    assert t8["sec_per_sample_cached"] > 0 and t8["sec_per_sample"] > 0
    assert t8["speedup"] == pytest.approx(1.0)
    assert results["run_config"]["name"] == cfg.name
    capsys.readouterr()
    run_pipeline(cfg, tmp_path, progress=False)
    out = capsys.readouterr().out
    for stage in ("teacher", "compass", "ar", "student (blind)", "student (shaped)"):
        assert f"== {stage}: complete, skipping" in out
    assert "sampling" not in out  # samples with the same provenance are reused
    assert "timing the uncached" not in out  # measured once, kept in the samples metadata
    assert "== evaluation: complete, skipping" in out  # same samples, same evaluators
    assert "| teacher_8 |" in out  # the table is still printed
    # a changed samples file is a new input: the report is rebuilt
    sample = tmp_path / "samples" / "teacher_8.jsonl"
    sample.write_text(sample.read_text() + "\n")
    run_pipeline(cfg, tmp_path, progress=False)
    assert "== evaluation\n" in capsys.readouterr().out
