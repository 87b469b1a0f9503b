"""Equal-entropy placement of gen-PPL rows (studies/studylib/frontier.py, studies/equal_entropy.py)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
from studylib.frontier import (
    arm_verdicts,
    equal_entropy_gaps,
    ppl_at_entropy,
    seed_label,
    side_of_curve,
)

from tsdfm.errors import TsdfmError

CURVE = [(4.2, 400.0), (4.0, 100.0), (4.5, 1600.0)]  # any order


def test_log_linear_between_bracketing_points():
    # halfway in entropy between 100 and 400 is their geometric mean, 200
    assert ppl_at_entropy(CURVE, 4.1) == pytest.approx(200.0)
    assert ppl_at_entropy(CURVE, 4.35) == pytest.approx(800.0)
    # the curve's own points are returned exactly
    assert ppl_at_entropy(CURVE, 4.0) == pytest.approx(100.0)
    assert ppl_at_entropy(CURVE, 4.5) == pytest.approx(1600.0)


def test_no_extrapolation_and_bad_curves():
    assert ppl_at_entropy(CURVE, 3.99) is None
    assert ppl_at_entropy(CURVE, 4.51) is None
    with pytest.raises(TsdfmError, match="at least two"):
        ppl_at_entropy([(4.0, 100.0)], 4.0)
    with pytest.raises(TsdfmError, match="positive and finite"):
        ppl_at_entropy([(4.0, 100.0), (4.2, math.inf)], 4.1)


def _row(label, entropy, **ppl):
    return {"label": label, "entropy": entropy, "gen_ppl": ppl}


def test_gaps_per_evaluator():
    ref = [_row("t", 4.0, a=100.0, b=50.0), _row("t_T", 4.2, a=400.0, b=200.0)]
    rows = [_row("s", 4.1, a=180.0, b=110.0), _row("far", 4.3, a=1.0, b=1.0)]
    g = {r["label"]: r for r in equal_entropy_gaps(ref, rows, ["a", "b"])}
    assert g["s"]["evaluators"]["a"]["reference"] == pytest.approx(200.0)
    assert g["s"]["evaluators"]["a"]["gap"] == pytest.approx(-0.10)
    assert g["s"]["evaluators"]["b"]["gap"] == pytest.approx(0.10)
    assert g["far"]["evaluators"]["a"]["gap"] is None  # outside the curve: no number


def _script():
    path = Path(__file__).resolve().parents[1] / "studies" / "equal_entropy.py"
    spec = importlib.util.spec_from_file_location("equal_entropy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_merges_evaluators_across_files(tmp_path, capsys):
    small = {
        "rows": [
            _row("teacher_8", 4.2, small=400.0),
            _row("teacher_8_T0.9", 4.0, small=100.0),
            _row("student_8", 4.1, small=220.0),
        ]
    }
    big = {
        "rows": [
            _row("teacher_8", 4.2, big=40.0),
            _row("teacher_8_T0.9", 4.0, big=10.0),
            _row("student_8", 4.1, big=18.0),
        ]
    }
    (tmp_path / "a.json").write_text(json.dumps(small))
    (tmp_path / "b.json").write_text(json.dumps(big))
    out = tmp_path / "t.md"
    rc = _script().main(
        [
            str(tmp_path / "a.json"),
            str(tmp_path / "b.json"),
            "--reference",
            "teacher_8*",
            "--rows",
            "student_*",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    line = next(ln for ln in out.read_text().splitlines() if ln.startswith("| student_8"))
    assert "220 / 200 / +10.0%" in line and "18 / 20 / -10.0%" in line
    assert capsys.readouterr().out == out.read_text()


def test_script_takes_a_relabelled_run_whole_from_the_later_file(tmp_path, capsys):
    """Two runs of one command share labels but not samples: the later file's teacher_8 must
    bring its own entropy, not only its perplexity (a merge put the old run's entropy under the
    new run's perplexity)."""
    old = {"rows": [_row("teacher_8", 4.5, small=1600.0), _row("teacher_8_T0.9", 4.0, small=50.0)]}
    new = {
        "rows": [
            _row("teacher_8", 4.2, small=400.0),
            _row("teacher_8_T0.9", 4.0, small=100.0),
            _row("student_8", 4.1, small=220.0),
        ]
    }
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    out = tmp_path / "t.md"
    args = ["--reference", "teacher_8*", "--rows", "student_*", "--out", str(out)]
    assert _script().main([str(tmp_path / "old.json"), str(tmp_path / "new.json"), *args]) == 0
    line = next(ln for ln in out.read_text().splitlines() if ln.startswith("| student_8"))
    assert "220 / 200 / +10.0%" in line  # the new curve: 100 at 4.0, 400 at 4.2
    assert "teacher_8 (4.200)" in out.read_text()
    assert "replaces an earlier file's row" in capsys.readouterr().err


def test_script_refuses_an_empty_selection(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"rows": [_row("teacher_8", 4.2, a=1.0)]}))
    with pytest.raises(SystemExit, match="need >= 2 reference rows"):
        _script().main([str(tmp_path / "a.json"), "--reference", "teacher_8*", "--rows", "x*"])


def test_script_names_a_missing_or_bad_results_file(tmp_path):
    with pytest.raises(SystemExit, match="missing.json: not a readable"):
        _script().main([str(tmp_path / "missing.json"), "--reference", "a", "--rows", "b"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json: not a readable"):
        _script().main([str(tmp_path / "bad.json"), "--reference", "a", "--rows", "b"])


def test_side_of_curve_inside_and_beyond_its_ends():
    assert side_of_curve(CURVE, 4.1, 180.0) == -1  # reference 200 there
    assert side_of_curve(CURVE, 4.1, 220.0) == 1
    # beyond the most diverse point (4.5, 1600): lower gen-PPL dominates, higher says nothing
    assert side_of_curve(CURVE, 4.6, 1500.0) == -1
    assert side_of_curve(CURVE, 4.6, 1700.0) == 0
    # below the sharpest point (4.0, 100): higher gen-PPL is dominated, lower says nothing
    assert side_of_curve(CURVE, 3.9, 120.0) == 1
    assert side_of_curve(CURVE, 3.9, 90.0) == 0


def test_seed_label_strips_only_the_seed():
    assert seed_label("student-c025-k4-s1_8") == "student-c025-k4_8"
    assert seed_label("student-blind-s0-T0.9_8") == "student-blind-T0.9_8"
    assert seed_label("student-c025-k4-from25-s12_8") == "student-c025-k4-from25_8"
    assert seed_label("teacher-T0.9_1024") == "teacher-T0.9_1024"
    assert seed_label("student-s2-x_8") == "student-s2-x_8"  # not a seed suffix


def test_arm_verdicts_need_every_seed_on_one_side_under_every_evaluator():
    ref = [_row("t", 4.0, a=100.0, b=100.0), _row("t_T", 4.2, a=400.0, b=400.0)]  # 200 at 4.1
    rows = [
        _row("student-x-s0_8", 4.1, a=180.0, b=190.0),
        _row("student-x-s1_8", 4.1, a=190.0, b=210.0),  # b: one seed above -> mixed
        _row("student-y-s0_8", 4.1, a=150.0, b=150.0),
        _row("student-y-s1_8", 4.3, a=390.0, b=390.0),  # off the curve, but dominates it
        _row("student-z-s0_8", 4.1, a=250.0, b=250.0),
        _row("student-z-s1_8", 4.3, a=900.0, b=900.0),  # off the curve, undecided
    ]
    v = {a["arm"]: a for a in arm_verdicts(equal_entropy_gaps(ref, rows, ["a", "b"]), ["a", "b"])}
    assert v["student-x_8"]["evaluators"]["a"]["verdict"] == "below"
    assert v["student-x_8"]["evaluators"]["b"]["verdict"] == "mixed"
    assert not v["student-x_8"]["below_all"]
    assert v["student-y_8"]["below_all"] and v["student-y_8"]["seeds"] == 2
    assert v["student-y_8"]["evaluators"]["a"]["gaps"][1] is None
    assert v["student-z_8"]["evaluators"]["a"]["verdict"] == "not placed"


def test_script_by_arm_table_names_the_arms_below(tmp_path):
    rows = [
        _row("teacher_1024", 4.2, small=400.0),
        _row("teacher-T0.9_1024", 4.0, small=100.0),
        _row("student-c1-k4-s0_8", 4.1, small=180.0),
        _row("student-c1-k4-s1_8", 4.1, small=160.0),
        _row("student-c2-k4-s0_8", 4.1, small=230.0),
        _row("student-c2-k4-s1_8", 4.1, small=150.0),
        _row("student-c3-k4-s0_8", 4.3, small=390.0),  # beyond the curve, dominating it
        _row("student-c3-k4-s1_8", 4.1, small=150.0),
    ]
    (tmp_path / "r.json").write_text(json.dumps({"rows": rows}))
    out = tmp_path / "t.md"
    args = ["--reference", "teacher*_1024", "--rows", "student-*", "--by-arm", "--out", str(out)]
    assert _script().main([str(tmp_path / "r.json"), *args]) == 0
    text = out.read_text()
    c1 = next(ln for ln in text.splitlines() if ln.startswith("| student-c1-k4_8"))
    assert "-15.0% (-20.0%..-10.0%) · below" in c1
    c2 = next(ln for ln in text.splitlines() if ln.startswith("| student-c2-k4_8"))
    assert "· mixed" in c2
    c3 = next(ln for ln in text.splitlines() if ln.startswith("| student-c3-k4_8"))
    assert "-25.0% (-25.0%..-25.0%), off the curve: 1 dominates · below" in c3
    assert "in every seed: student-c1-k4_8, student-c3-k4_8." in text
