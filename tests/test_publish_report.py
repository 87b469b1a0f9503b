"""scripts/publish_report.py: a run's report copied for committing keeps valid sample paths."""

import json
from pathlib import Path

import pytest


def _fake_run(run: Path) -> None:
    (run / "report" / "plots").mkdir(parents=True)
    (run / "samples").mkdir()
    (run / "samples" / "teacher_8.jsonl").write_text('{"ids": [1], "text": "a"}\n')
    (run / "samples" / "teacher_8.meta.json").write_text('{"steps": 8}')
    (run / "report" / "plots" / "frontier.png").write_bytes(b"png")
    (run / "report" / "report.md").write_text("# report\n")
    rows = [
        {"label": "data", "samples": None},
        {"label": "teacher_8", "samples": "../samples/teacher_8.jsonl", "gen_ppl": {"x": 2.0}},
    ]
    (run / "report" / "results.json").write_text(json.dumps({"rows": rows}))


def test_publish_copies_report_samples_and_rewrites_paths(tmp_path, load_script):
    _fake_run(tmp_path / "run")
    dest = tmp_path / "docs" / "demo"
    copied = load_script("publish_report").publish(tmp_path / "run", dest)
    assert sorted(p.name for p in copied) == ["teacher_8.jsonl", "teacher_8.meta.json"]
    results = json.loads((dest / "results.json").read_text())
    row = results["rows"][1]
    assert row["samples"] == "samples/teacher_8.jsonl" and row["gen_ppl"] == {"x": 2.0}
    assert (dest / row["samples"]).read_text() == '{"ids": [1], "text": "a"}\n'
    assert (dest / "plots" / "frontier.png").is_file() and (dest / "report.md").is_file()


def test_publish_refuses_a_run_without_report(tmp_path, load_script):
    with pytest.raises(SystemExit, match="run the pipeline to its report first"):
        load_script("publish_report").publish(tmp_path, tmp_path / "out")
