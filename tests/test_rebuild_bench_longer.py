"""studies/rebuild_bench_longer.sh: which stages it runs, skips and resumes (dry run, no training)."""

import json
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "rebuild_bench_longer.sh"


def run(root: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROOT": str(root), "TSDFM": "tsdfm", **env}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)


def test_dry_run_skips_finished_stages_and_resumes_interrupted_ones(tmp_path):
    (tmp_path / "bench" / "data").mkdir(parents=True)
    (tmp_path / "bench" / "data" / "manifest.json").write_text("{}")
    (tmp_path / "bench" / "teacher").mkdir()
    (tmp_path / "bench" / "teacher" / "summary.json").write_text("{}")
    (tmp_path / "bench-long" / "teacher" / "checkpoints").mkdir(parents=True)
    latest = {"file": "step_0004500.pt", "step": 4500, "sha256": "0" * 64}
    (tmp_path / "bench-long" / "teacher" / "checkpoints" / "latest.json").write_text(
        json.dumps(latest, indent=2)
    )
    out = run(tmp_path, DRY_RUN="1")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("== ")]
    assert lines.pop(0).startswith("== host: ")  # the CPU, for the log
    assert lines[0] == f"== data: done ({tmp_path}/bench/data)"
    assert lines[1] == f"== bench teacher: done ({tmp_path}/bench/teacher)"
    long, longer = lines[2], lines[3]
    assert long.startswith(
        "== bench-long teacher: would run: tsdfm train teacher"
    ) and long.endswith("--resume (from its step 4500)")
    assert f"teacher.init_from={tmp_path}/bench/teacher/model" in long
    assert "teacher.train.steps=10000" in long and "teacher.train.max_minutes=0" in long
    assert f"teacher.init_from={tmp_path}/bench-long/teacher/model" in longer
    assert "teacher.train.steps=9000" in longer and not longer.endswith("--resume")
    assert "evaluator_small.train.stop_at_step=874" in lines[4]
    assert lines[5].startswith("== evaluator-large: would run:")
    assert lines[6] == "== dry run: nothing was started"


def test_a_bad_deadline_is_refused_early(tmp_path):
    out = run(tmp_path, DEADLINE="half past seven")
    assert out.returncode == 2 and "DEADLINE='half past seven'" in out.stderr
    assert not (tmp_path / "bench").exists()  # nothing started
