"""studies/markov_scale.sh, the GPU recipe of the exact benchmark's shaping study, checked at its
toy preset on the CPU: every stage runs, every row is sampled, the pack holds what a GPU run
must bring back, and the study evaluates from it."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "studies" / "markov_scale.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "RUN": str(tmp_path / "run"), **env}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("PRESET", "huge", "PRESET must be"),
        ("SOURCE", "noise", "SOURCE must be"),
        ("ARMS", "blind ar-k0", "unknown arm 'ar-k0'"),
        ("SEEDS", "0 x", "SEEDS must be"),
    ],
)
def test_bad_settings_fail_before_writing_anything(tmp_path, key, value, message):
    res = _run(tmp_path, **{key: value})
    assert res.returncode == 2 and message in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tiny_preset_trains_samples_packs_and_evaluates(tmp_path):
    res = _run(tmp_path, PRESET="tiny", PACK=str(tmp_path / "pack"))
    assert res.returncode == 0, res.stdout + res.stderr
    stages = [line for line in res.stdout.splitlines() if ": exit " in line]
    assert len(stages) == 10 and all(": exit 0 " in line for line in stages), res.stdout
    samples = tmp_path / "run" / "study" / "samples"
    # teacher @ 16 / 8; 3 blind seeds x 4 steps x 4 temperatures; 3 shaped seeds x 4 steps
    assert len(list(samples.glob("*.jsonl"))) == 2 + 48 + 12
    assert (samples / "student-blind-s2-T0.85_8.jsonl").is_file()
    pack = {p.name for p in (tmp_path / "pack").iterdir()}
    assert {"study.tar.gz", "teacher.tar.aa", "compass.tar.aa"} <= pack
    with tarfile.open(tmp_path / "pack" / "study.tar.gz") as tar:
        names = tar.getnames()
    assert "study/samples/teacher_16.jsonl" in names and "./student-ar-k8-s0/summary.json" in names
    out = tmp_path / "eval"
    (out / "samples").mkdir(parents=True)
    for f in samples.glob("*_8.*"):
        (out / "samples" / f.name).write_bytes(f.read_bytes())
    cmd = [sys.executable, str(ROOT / "studies" / "student_study.py"), "--config",
           str(ROOT / "configs" / "markov.yaml"), "--run-dir", str(tmp_path / "run"),
           "--eval-only", "--no-plots", "--out", str(out), "flow.source=uniform",
           "data.markov.num_train=3000"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert not (out / "plots").exists() and "plots/" not in (out / "report.md").read_text()
    study = (out / "study.md").read_text()
    assert "| ar-k8 | 8 | 3 |" in study and "| blind T=0.85 | 8 | 3 |" in study
    # more arms beside the finished run: its data, teacher and compass are reused, not retrained
    teacher = (tmp_path / "run" / "teacher" / "summary.json").stat().st_mtime_ns
    res = _run(tmp_path, PRESET="tiny", ARMS="self-k2", SEEDS="1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "teacher:" not in res.stdout and "compass:" not in res.stdout
    assert (tmp_path / "run" / "teacher" / "summary.json").stat().st_mtime_ns == teacher
    assert (samples / "student-self-k2-s1_8.jsonl").is_file()
    assert not (samples / "student-self-k2-s1-T0.9_8.jsonl").exists()  # only blind gets T < 1
