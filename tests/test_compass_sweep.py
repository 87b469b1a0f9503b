"""studies/compass_sweep.sh (issue 36): its plan (dry run, nothing trained) and its input checks."""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "compass_sweep.sh"


def run(root: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROOT": str(root), "TSDFM": "tsdfm", "PY": "python", **env}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)


def plan(root: Path, **env) -> list[str]:
    out = run(root, DRY_RUN="1", **env)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.startswith("== ")]


def test_plan_compass_sizes_then_seed_major_students(tmp_path):
    (tmp_path / "bench-longest" / "compass-c010").mkdir(parents=True)
    (tmp_path / "bench-longest" / "compass-c010" / "summary.json").write_text("{}")
    lines = plan(tmp_path)
    names = [line.split(":")[0][3:] for line in lines]
    assert names[names.index("bench-longest teacher") - 1] == "evaluator-large"  # after the rebuild
    teacher = lines[names.index("bench-longest teacher")]
    assert f"teacher.init_from={tmp_path}/bench-longer/teacher/model" in teacher
    assert "teacher.train.steps=10000" in teacher and "teacher.train.lr=0.0003" in teacher
    assert lines[names.index("compass c010")].endswith(
        "done (" + f"{tmp_path}/bench-longest/compass-c010)"
    )
    c025, c100 = lines[names.index("compass c025")], lines[names.index("compass c100")]
    assert "compass.model.dim=120 compass.model.n_layers=2" in c025
    assert "compass.model.dim=256 compass.model.n_layers=4 compass.model.n_heads=4" in c100
    assert "compass.train.seed=7" in c100 and "compass.train.steps=1000" in c100
    students = [n for n in names if " seed " in n]
    assert students == [
        f"{a} seed {s}"
        for s in (0, 1, 2)
        for a in ("blind", "c010-k4", "c025-k4", "c100-k4", "chain-k8")
    ]
    c100_s2 = lines[names.index("c100-k4 seed 2")]
    assert "student.shaping.candidates=4;student.shaping.t_start=0 " in c100_s2
    assert f"--compass c100-k4={tmp_path}/bench-longest/compass-c100" in c100_s2
    chain = lines[names.index("chain-k8 seed 0")]
    assert "student.kind=chain;student.latent_codes=8;" in chain
    assert "chain_features=changeable" in chain and "--compass" not in chain
    assert "--temperatures 1 0.9 0.85 0.8" in lines[names.index("teacher rows")]
    assert "--temperatures 0.95 0.9 0.85 0.8" in lines[names.index("blind curve")]
    assert names[-1] == "evaluate"
    assert names.index("blind curve") == names.index("chain-k8 seed 0") + 1  # after seed 0


def test_best_adds_k8_and_the_navigation_window_at_that_size(tmp_path):
    lines = plan(tmp_path, BEST="c025", SEEDS="1", CHAIN="")
    named = {line.split(":")[0][3:]: line for line in lines}
    follow = {n: line for n, line in named.items() if "-k8 " in n or "-from" in n}
    assert set(follow) == {"c025-k8 seed 1", "c025-k4-from25 seed 1", "c025-k4-from50 seed 1"}
    assert "candidates=8;student.shaping.t_start=0 " in follow["c025-k8 seed 1"]
    assert "candidates=4;student.shaping.t_start=0.25 " in follow["c025-k4-from25 seed 1"]
    assert "t_start=0.50 " in follow["c025-k4-from50 seed 1"]
    assert all("compass-c025" in line for line in follow.values())
    assert not any("chain" in line for line in lines)  # CHAIN="" leaves the chain arm out


def test_bad_settings_are_refused_before_anything_starts(tmp_path):
    out = run(tmp_path, BEST="c050")
    assert out.returncode == 2 and "BEST='c050'" in out.stderr
    out = run(tmp_path, CHAIN="many")
    assert out.returncode == 2 and "CHAIN='many'" in out.stderr
    out = run(tmp_path, DEADLINE="teatime")
    assert out.returncode == 2 and "DEADLINE='teatime'" in out.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_clock_time_already_past_means_tomorrow():
    """A session crossing midnight: DEADLINE=02:15 given at 23:48 counts down to tomorrow's
    02:15, not to a time already gone (which would stop every stage before it starts)."""
    earlier = subprocess.run(
        ["date", "-d", "5 minutes ago", "+%H:%M"], capture_output=True, text=True
    ).stdout.strip()
    stages = SCRIPT.parent / "stages.sh"
    out = subprocess.run(
        ["bash", "-c", f'DEADLINE={earlier}; source "{stages}"; echo "$DEADLINE"; minutes_left'],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    *_, deadline, minutes = out.stdout.splitlines()
    assert 1400 < int(minutes) <= 1440  # about a day away, either side of midnight
    # an absolute instant: a relative "tomorrow HH:MM" read again after midnight moves a day on
    day = subprocess.run(["date", "-d", "now - 5 minutes + 1 day", "+%F"], capture_output=True)
    assert deadline.startswith(f"{day.stdout.decode().strip()} {earlier}:00"), deadline
