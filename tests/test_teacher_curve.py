"""studies/teacher_curve.py: stages on one step axis, and the 1%-per-5,000-steps rule."""

from __future__ import annotations

import json


def _stage(path, points, steps=None):
    path.mkdir(parents=True)
    (path / "eval.csv").write_text("step,val_loss\n" + "".join(f"{s},{v}\n" for s, v in points))
    if steps is not None:
        (path / "summary.json").write_text(json.dumps({"steps": steps}))


def test_stages_line_up_and_the_rule_reads_the_last_5000_steps(tmp_path, load_script):
    _stage(tmp_path / "a" / "teacher", [(500, 7.0), (965, 6.0)], steps=965)
    # 4.000 at its step 5,000 -> 3.970 at 10,000: a fall of 0.75%, under 1%
    _stage(tmp_path / "b" / "teacher", [(1000, 5.0), (5000, 4.0), (10000, 3.97)], steps=10000)
    out = tmp_path / "curve.md"
    runs = [str(tmp_path / "a" / "teacher"), str(tmp_path / "b" / "teacher")]
    assert load_script("teacher_curve").main([*runs, "--out", str(out)]) == 0
    text = out.read_text()
    assert "10,965 steps in all" in text
    assert "| b | 1,000 | 1,965 | 5.0000 |" in text  # the second stage starts at 965
    assert "a fall of 0.75% over 5,000 steps (under the issue's 1%" in text


def test_a_fall_over_1_percent_or_too_short_a_stage_is_not_a_plateau(tmp_path, load_script):
    _stage(tmp_path / "b" / "teacher", [(1000, 5.0), (6000, 4.0), (11000, 3.95)], steps=11000)
    _stage(tmp_path / "c" / "teacher", [(1000, 5.0), (2000, 4.99)])  # unfinished, no summary
    script = load_script("teacher_curve")
    out = tmp_path / "curve.md"
    assert script.main([str(tmp_path / "b" / "teacher"), "--out", str(out)]) == 0
    assert "1.25% over 5,000 steps (NOT under" in out.read_text()
    assert script.main([str(tmp_path / "c" / "teacher"), "--out", str(out)]) == 0
    assert "(only 1,000 steps logged: too few for the issue's 1%" in out.read_text()
