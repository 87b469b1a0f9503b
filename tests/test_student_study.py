"""studies/student_study.py's summary: mean and spread over seeds, the right columns per corpus."""


def _row(arm, steps, ppl, entropy):
    return {"method": "blind", "arm": arm, "steps": steps, "gen_ppl": ppl, "entropy": entropy}


def test_text_summary_has_gen_ppl_per_evaluator_with_seed_spread(load_script):
    results = {
        "evaluators": ["ar-small", "smollm2-135m"],
        "rows": [
            {"method": "data", "steps": None, "gen_ppl": {"ar-small": 100.0}, "entropy": 4.3},
            _row("blind s0", 8, {"ar-small": 200.0, "smollm2-135m": 30.0}, 4.4),
            _row("blind s1", 8, {"ar-small": 300.0, "smollm2-135m": 40.0}, 4.5),
        ],
    }
    table = load_script("student_study").summarise(results, baseline=None)
    header, _, data_row, blind_row = table.strip().splitlines()
    assert header == "| arm | steps | seeds | gen-PPL ar-small | gen-PPL smollm2-135m | entropy |"
    assert data_row == "| data | – | 1 | 100.0 | – | 4.3000 |"
    assert blind_row == (
        "| blind | 8 | 2 | 250.0 (200.0..300.0) | 35.0000 (30.0000..40.0000) | 4.4500 (4.4000..4.5000) |"
    )


def test_markov_summary_keeps_truth_and_tv_columns(load_script):
    row = {"method": "teacher", "steps": 8, "truth_nll": 2.5, "entropy": 3.4}
    row["ngram_tv"] = {"2": 0.12, "3": 0.24}
    table = load_script("student_study").summarise({"rows": [row]}, baseline=None)
    assert table.splitlines()[0] == (
        "| arm | steps | seeds | truth_nll | entropy | 2-gram TV | 3-gram TV |"
    )
    assert table.splitlines()[2] == "| teacher | 8 | 1 | 2.5000 | 3.4000 | 0.1200 | 0.2400 |"


def test_text_summary_compares_each_arm_with_the_baseline_and_the_1024_step_teacher(load_script):
    results = {
        "evaluators": ["a", "b"],
        "rows": [
            {
                "method": "teacher",
                "steps": 1024,
                "gen_ppl": {"a": 100.0, "b": 50.0},
                "entropy": 4.0,
            },
            _row("blind s0", 8, {"a": 200.0, "b": 100.0}, 4.0),
            _row("blind s1", 8, {"a": 220.0, "b": 110.0}, 4.0),
            _row("shaped s0", 8, {"a": 150.0, "b": 100.0}, 3.8),
            _row("shaped s1", 8, {"a": 160.0, "b": 120.0}, 3.8),
        ],
    }
    table = load_script("student_study").summarise(results, baseline="blind")
    shaped = [line for line in table.splitlines() if line.startswith("| shaped | 8 | 2 | -")]
    # a: 155 vs 210 (-26.2%), b: 110 vs 105 (+4.8%); ranges overlap under b -> not separated;
    # vs the teacher: +55.0% / +120.0%; entropy 3.8 vs 4.0 -> -5.0%
    assert shaped == ["| shaped | 8 | 2 | -26.2% / +4.8% | no | +55.0% / +120.0% | -5.0% |"]


def test_summarise_only_tabulates_an_existing_results_file(
    load_script, tmp_path, monkeypatch, capsys
):
    import json
    import sys

    import pytest

    results = {"evaluators": ["a"], "rows": [_row("blind s0", 8, {"a": 200.0}, 4.0)]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    script = load_script("student_study")
    monkeypatch.setattr(sys, "argv", ["x", "--summarise", str(tmp_path / "results.json")])
    script.main()
    assert "| blind | 8 | 1 | 200.0 | 4.0000 |" in (tmp_path / "study.md").read_text()
    monkeypatch.setattr(sys, "argv", ["x", "--seeds", "0"])
    with pytest.raises(SystemExit):
        script.main()
    assert "required: --config, --run-dir, --out" in capsys.readouterr().err


def test_rows_at_other_sampling_temperatures_are_not_pooled_as_seeds(load_script):
    def row(arm, temperature, tv):
        r = {"method": "blind", "arm": arm, "steps": 8, "truth_nll": 2.5, "entropy": 3.4}
        return {**r, "temperature": temperature, "ngram_tv": {"2": tv, "3": 0.2}}

    rows = [row("blind s0", 1.0, 0.13), row("blind s1", None, 0.14), row("blind s0", 0.85, 0.1)]
    table = load_script("student_study").summarise({"rows": rows}, baseline=None)
    assert "| blind | 8 | 2 | 2.5000 (2.5000..2.5000) | 3.4000 (3.4000..3.4000) | 0.1350" in table
    assert "| blind T=0.85 | 8 | 1 | 2.5000 | 3.4000 | 0.1000 | 0.2000 |" in table


def test_excess_tv_is_also_compared_with_the_baseline_at_the_same_temperature(load_script):
    def row(arm, temperature, tv):
        r = {"method": "x", "arm": arm, "steps": 8, "truth_nll": 2.0, "entropy": 3.4}
        return {**r, "temperature": temperature, "ngram_tv": {"2": tv}}

    results = {
        "rows": [
            {"method": "data", "steps": None, "truth_nll": 1.9, "ngram_tv": {"2": 0.02}},
            row("blind s0", 1.0, 0.12),
            row("blind s0", 0.9, 0.10),
            row("shaped s0", 1.0, 0.11),
            row("shaped s0", 0.9, 0.08),
        ]
    }
    lines = load_script("student_study").summarise(results, baseline="blind").splitlines()
    by_arm = {line.split(" | ")[0]: line for line in lines if line.startswith("| ")}
    # excess over the 0.02 floor: blind 0.10 / 0.08, shaped 0.09 / 0.06
    assert by_arm["| shaped"].endswith("| 0.900 | yes | 0.900 | +5.3% |")
    shaped_t = [line for line in lines if line.startswith("| shaped T=0.9 | 8 | 1 | 0.0600 |")]
    assert shaped_t == ["| shaped T=0.9 | 8 | 1 | 0.0600 | 0.600 | yes | 0.750 | +5.3% |"]


def test_temperature_frontier_averages_seeds_per_family_and_temperature(load_script, tmp_path):
    def row(arm, temperature, entropy, tv):
        r = {"method": "x", "arm": arm, "steps": 8, "truth_nll": 2.0 + tv, "entropy": entropy}
        return {**r, "temperature": temperature, "ngram_tv": {"2": tv}}

    data = {"method": "data", "truth_nll": 1.9, "entropy": 3.5, "ngram_tv": {"2": 0.02}}
    data["ngram_order"] = 2
    rows = [data, row("blind s0", None, 3.4, 0.12), row("blind s1", 1.0, 3.6, 0.14)]
    rows += [row("blind s0", 0.9, 3.3, 0.10), row("shaped s0", 1.0, 3.2, 0.11)]
    script = load_script("temperature_frontier")
    fams, got_data = script.families({"rows": rows})
    assert got_data is data and list(fams) == ["blind", "shaped"]
    (t09, t1) = fams["blind"]
    assert t09[:2] == (0.9, 1) and t1[:2] == (1.0, 2)
    assert t1[2] == 3.5 and abs(t1[3] - 2.13) < 1e-12 and abs(t1[4] - 0.11) < 1e-12
    assert script.plot(fams, data, tmp_path / "f.png").stat().st_size > 0
    assert script.plot(fams, data, tmp_path / "g.png", x="truth-nll").stat().st_size > 0


def test_keep_rows_merges_published_rows_whose_samples_were_dropped(load_script, tmp_path):
    """``--eval-only --keep-rows``: rows evaluated afresh replace their published versions,
    published rows with dropped samples stay, the reference rows come from the fresh run."""
    import json

    import pytest

    def row(label, nll, **extra):
        base = {"method": "blind", "steps": 8, "truth_nll": nll, "entropy": 3.4, "label": label}
        return {**base, **extra}

    published = {
        "config": "markov",
        "evaluators": ["truth"],
        "rows": [
            {"method": "data", "label": "data (test split)", "truth_nll": 1.80},
            row("student-b-s0_8", 2.6, samples=None, samples_dropped="samples/b.jsonl"),
            row("student-a-s0_8", 2.5, samples=None, samples_dropped="samples/a.jsonl"),
            row("teacher_8", 2.7, samples=None, samples_dropped="samples/t.jsonl"),
        ],
    }
    (tmp_path / "results.json").write_text(json.dumps(published))
    script = load_script("student_study")
    kept = script._kept_rows(tmp_path / "results.json", None)
    assert [r["label"] for r in kept] == ["student-b-s0_8", "student-a-s0_8", "teacher_8"]
    fresh = {
        "config": "markov",
        "evaluators": ["truth"],
        "rows": [
            {"method": "data", "label": "data (test split)", "truth_nll": 1.88},
            row("student-b-s0_8", 2.4, samples="samples/student-b-s0_8.jsonl"),
            row("student-b-s1_8", 2.3, samples="samples/student-b-s1_8.jsonl"),
        ],
    }
    merged = script._merge_rows(tmp_path, fresh, kept, plots=False)
    got = [(r["label"], r["truth_nll"]) for r in merged["rows"]]
    assert got == [
        ("data (test split)", 1.88),  # measured again
        ("teacher_8", 2.7),  # teacher rows first, then arms by name
        ("student-a-s0_8", 2.5),  # kept
        ("student-b-s0_8", 2.4),  # evaluated afresh: the new row wins
        ("student-b-s1_8", 2.3),
    ]
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == merged["rows"]
    with pytest.raises(SystemExit, match="scored by"):
        script._kept_rows(tmp_path / "results.json", ["ar-small"])


def test_compass_per_arm_reaches_the_shaping_setup(load_script, tmp_path, monkeypatch, capsys):
    """``--compass ARM=DIR``: that arm's shaped students get DIR as their compass, the others
    the run's default (None here); an unknown arm or a missing directory is refused."""
    import sys

    import pytest

    script = load_script("student_study")
    seen = {}

    def setup(cfg, teacher, data, navigate, compass_dir=None):
        seen[cfg.student.shaping.candidates] = compass_dir
        return None, "shaped", {}, "x"

    monkeypatch.setattr(script, "shaping_setup", setup)
    monkeypatch.setattr(script, "train_student", lambda *a, **k: None)
    monkeypatch.setattr(script, "draw_samples", lambda *a, **k: None)
    monkeypatch.setattr(script, "write_samples", lambda path, draw: path)
    small = tmp_path / "compass-small"
    small.mkdir()
    base = ["x", "--config", "configs/markov.yaml", "--run-dir", str(tmp_path), "--out"]
    base += [str(tmp_path / "out"), "--no-eval", "--teacher-steps", "--seeds", "0"]
    base += ["--arm", "k2=student.shaping.compass=ar;student.shaping.candidates=2"]
    base += ["--arm", "k4=student.shaping.compass=ar;student.shaping.candidates=4"]
    monkeypatch.setattr(sys, "argv", [*base, "--compass", f"k2={small}"])
    script.main()
    assert seen == {2: small, 4: None}
    for bad, why in ((f"k8={small}", "one of --arm"), (f"k2={tmp_path / 'nope'}", "no directory")):
        monkeypatch.setattr(sys, "argv", [*base, "--compass", bad])
        with pytest.raises(SystemExit):
            script.main()
        assert why in capsys.readouterr().err


def test_no_plots_reaches_the_evaluation_and_the_merge(load_script, tmp_path, monkeypatch):
    """``--eval-only --no-plots``: the evaluation and the ``--keep-rows`` merge write report.md
    without plots (a study folder under docs/ commits no plots, so links to them would break);
    without the flag both keep their plots."""
    import json
    import sys
    import types

    import tsdfm.data
    import tsdfm.evaluation.harness
    import tsdfm.evaluation.registry

    script = load_script("student_study")
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "student-a-s0_8.jsonl").write_text("")
    published = {"config": "markov", "evaluators": ["truth"], "rows": [
        {"method": "blind", "steps": 8, "label": "student-b-s0_8", "samples": None,
         "samples_dropped": "samples/b.jsonl"}]}  # fmt: skip
    seen = {}

    def evaluate(files, evaluators, data_dir, **kw):
        seen["evaluate"] = kw["plots"]
        return {"config": "markov", "evaluators": ["truth"], "rows": []}

    def merge(out_dir, results, kept, plots=True):
        seen["merge"] = plots
        return results

    data = types.SimpleNamespace(chain=lambda: None)
    monkeypatch.setattr(tsdfm.data, "load_prepared", lambda path: data)
    monkeypatch.setattr(tsdfm.evaluation.registry, "build_evaluators", lambda specs, d: {})
    monkeypatch.setattr(tsdfm.evaluation.registry, "default_specs", lambda path, exact: [])
    monkeypatch.setattr(tsdfm.evaluation.harness, "evaluate", evaluate)
    monkeypatch.setattr(script, "_merge_rows", merge)
    monkeypatch.setattr(script, "summarise", lambda results, baseline: "")
    monkeypatch.setattr(script, "_write_study", lambda out_dir, table: None)
    base = ["x", "--config", "configs/markov.yaml", "--run-dir", str(tmp_path), "--out", str(out)]
    for flags, want in (([], True), (["--no-plots"], False)):
        (out / "results.json").write_text(json.dumps(published))
        monkeypatch.setattr(sys, "argv", [*base, "--eval-only", "--keep-rows", *flags])
        script.main()
        assert seen == {"evaluate": want, "merge": want}
