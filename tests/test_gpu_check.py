"""scripts/gpu_check.sh, the prepared check for a lent GPU, run here at toy shapes on the CPU
(every stage: eager and compiled smoke, the study's trainings, sampling, evaluation, report),
and its refusal of missing data before any device time is spent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_data_prepare import write_jsonl

from tsdfm.data import DataSpec, prepare_data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_check(tmp_path: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "RUN": str(tmp_path / "run"),
        "TSDFM_CACHE": str(tmp_path / "cache"),  # no SmolLM2 here: the two trained evaluators
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_missing_data_is_refused_before_any_work(tmp_path):
    r = run_check(tmp_path, "--tiny", "--device", "cpu", "--data", str(tmp_path / "nothing"))
    assert r.returncode == 2
    assert "no prepared data" in r.stderr and "carry" in r.stderr
    assert not (tmp_path / "out").exists()
    r = run_check(tmp_path, "--device", "tpu")
    assert r.returncode == 2 and "--device must be cuda or cpu" in r.stderr


@pytest.mark.slow
def test_gpu_check_runs_every_stage_at_toy_shapes_on_cpu(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", n=400, seed=5)
    spec = DataSpec(
        corpus=str(corpus), seq_len=32, vocab_size=300, valid_fraction=0.1, test_fraction=0.1
    )
    prepare_data(spec, tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    r = run_check(tmp_path, "--tiny", "--device", "cpu", "--data", str(tmp_path / "data"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    stages = [s["stage"] for s in results["stages"]]
    assert stages[:2] == ["smoke-eager", "smoke-compile"] and stages[-1] == "study"
    assert {"teacher", "compass", "evaluator-small", "evaluator-large", "ar"} <= set(stages)
    assert {"student-blind", "student-shaped"} <= set(stages)
    assert results["ok"] and all(s["exit"] == 0 for s in results["stages"])
    assert results["smoke"]["compile"]["compile"] is True
    assert [r["stage"] for r in results["smoke"]["compile"]["rows"]] == ["teacher"]
    teacher = results["smoke"]["eager"]["rows"][0]
    assert teacher["train_GFLOP_per_token"] > 0 and teacher["mfu"] is None  # no GPU peak
    assert "MFU not computed" in teacher["mfu_note"]
    rows = json.dumps(results["study_results"]["rows"])  # every row was sampled and scored
    for name in ("teacher_16", "student-blind_4", "student-shaped_1", "ar-small", "ar-large"):
        assert name in rows
    report = (out / "report.md").read_text()
    assert (
        "Smoke at the shape 64 x 2, L = 64, V = 509, eager" in report and "student-blind" in report
    )
    assert (out / "study" / "samples").is_dir()
