"""studies/arm_cost.py: cost per step and navigation statistics per arm, from run directories."""

from __future__ import annotations

import json

import pytest


def _run(path, summary: dict, log: list[dict] | None = None):
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    if log is not None:
        keys = list(log[0])
        lines = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in log]
        (path / "log.csv").write_text("\n".join(lines) + "\n")


def test_medians_over_seeds_of_per_run_means(tmp_path, load_script):
    run = tmp_path / "run"
    _run(run / "teacher", {"parameters": 1000})
    _run(run / "compass-c025", {"parameters": 250, "final_val_loss": 2.0})
    for seed, sec in [(0, 1.0), (1, 1.2)]:
        _run(run / f"student-blind-s{seed}", {"sec_per_step": sec}, [{"step": 1, "loss": 1.0}])
    nav = {
        0: [
            {"step": 1, "nav_gap": 0.1, "nav_changed": 0.5},
            {"step": 2, "nav_gap": 0.3, "nav_changed": 0.7},
        ],
        1: [{"step": 1, "nav_gap": 0.4, "nav_changed": 0.8}],
    }
    for seed, sec in [(0, 2.0), (1, 2.6)]:
        _run(run / f"student-c025-k4-s{seed}", {"sec_per_step": sec}, nav[seed])
    out = tmp_path / "cost.md"
    assert load_script("arm_cost").main([str(run), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    blind = next(ln for ln in lines if ln.startswith("| student-blind |"))
    assert blind == "| student-blind | 1.10 | 1.00x | – | – | 2 |"
    shaped = next(ln for ln in lines if ln.startswith("| student-c025-k4 |"))
    # seed means 0.2 and 0.4 (gap), 0.6 and 0.8 (changed); their medians 0.3 and 0.7
    assert shaped == "| student-c025-k4 | 2.30 | 2.09x | 0.3000 | 0.7000 | 2 |"
    compass = next(ln for ln in lines if ln.startswith("| compass-c025 |"))
    assert compass == "| compass-c025 | 250 | 0.25x | 2.0000 | 7.4 |"


def test_refuses_a_run_without_students(tmp_path, load_script, capsys):
    script = load_script("arm_cost")
    assert script.main([str(tmp_path / "none"), "--out", str(tmp_path / "o.md")]) == 2
    assert "is not a directory" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no finished student"):
        script.main([str(tmp_path), "--out", str(tmp_path / "o.md")])
