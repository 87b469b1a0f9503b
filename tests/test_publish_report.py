"""scripts/publish_report.py: a run's report copied for committing keeps valid sample paths."""

import json
from pathlib import Path

import pytest

from tsdfm.generation import read_samples


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
    assert sorted(p.name for p in copied) == ["teacher_8.jsonl.gz", "teacher_8.meta.json"]
    results = json.loads((dest / "results.json").read_text())
    row = results["rows"][1]
    assert row["samples"] == "samples/teacher_8.jsonl.gz" and row["gen_ppl"] == {"x": 2.0}
    ids, texts, meta = read_samples(dest / row["samples"])
    assert ids.tolist() == [[1]] and texts == ["a"] and meta == {"steps": 8}
    assert (dest / "plots" / "frontier.png").is_file() and (dest / "report.md").is_file()


def test_publish_refuses_a_run_without_report(tmp_path, load_script):
    with pytest.raises(SystemExit, match="run the pipeline to its report first"):
        load_script("publish_report").publish(tmp_path, tmp_path / "out")


def test_compact_samples_converts_a_folder_and_rewrites_results(tmp_path, load_script):
    """Committed folders convert in place: .jsonl.gz beside the meta, results.json pointed at
    it, dropped rows keep their metrics with no samples file."""
    _fake_run(tmp_path / "run")
    folder = tmp_path / "run" / "report"
    (tmp_path / "run" / "samples" / "old_8.jsonl").write_text('{"ids": [2, 3], "text": "2 3"}\n')
    results = json.loads((folder / "results.json").read_text())
    results["rows"].append({"label": "old_8", "samples": "../samples/old_8.jsonl"})
    (folder / "results.json").write_text(json.dumps(results))
    script = load_script("compact_samples")
    assert script.compact(tmp_path / "run", drop=["old_*"]) == (1, 1)
    rows = json.loads((folder / "results.json").read_text())["rows"]
    assert rows[1]["samples"] == "../samples/teacher_8.jsonl.gz"
    assert rows[2]["samples"] is None and rows[2]["samples_dropped"]
    assert read_samples(folder / rows[1]["samples"])[1] == ["a"]
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "teacher_8.jsonl.gz",
        "teacher_8.meta.json",
    ]


def test_compact_samples_relinks_shared_rows_and_refuses_an_unconverted_target(
    tmp_path, load_script
):
    """A row shared by two studies is a link: it becomes a link to the ``.gz`` (never a second
    copy), only once the folder it points into is converted; a link to a file that was never
    committed goes, and its row says which file regenerates."""
    a, b = tmp_path / "a" / "samples", tmp_path / "b" / "samples"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    (a / "teacher_8.jsonl").write_text('{"ids": [1], "text": "x"}\n')
    (b / "teacher_8.jsonl").symlink_to("../../a/samples/teacher_8.jsonl")
    (b / "mid_8.jsonl").symlink_to("teacher_8.jsonl")  # a link to a link
    (b / "gone_8.jsonl").symlink_to("../../a/samples/never_8.jsonl")
    rows = [{"samples": f"samples/{n}_8.jsonl"} for n in ("teacher", "mid", "gone")]
    (tmp_path / "b" / "results.json").write_text(json.dumps({"rows": rows}))
    script = load_script("compact_samples")
    with pytest.raises(SystemExit, match="convert its folder first"):
        script.compact(tmp_path / "b", drop=[])
    assert script.compact(tmp_path / "a", drop=[]) == (1, 0)
    assert script.compact(tmp_path / "b", drop=[]) == (2, 1)
    assert (b / "teacher_8.jsonl.gz").is_symlink() and (b / "mid_8.jsonl.gz").is_symlink()
    assert (b / "teacher_8.jsonl.gz").resolve() == (a / "teacher_8.jsonl.gz").resolve()
    assert sorted(p.name for p in b.iterdir()) == ["mid_8.jsonl.gz", "teacher_8.jsonl.gz"]
    rows = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert [r["samples"] for r in rows[:2]] == [
        "samples/teacher_8.jsonl.gz",
        "samples/mid_8.jsonl.gz",
    ]
    assert rows[2]["samples"] is None and "samples/gone_8.jsonl" in rows[2]["samples_dropped"]
    assert read_samples(tmp_path / "b" / rows[1]["samples"])[1] == ["x"]


def test_compact_samples_drops_files_compacted_earlier(tmp_path, load_script):
    """A published folder's .jsonl.gz rows can be dropped later to make room: the file and its
    meta go, the metrics stay, the row names the file its README regenerates."""
    _fake_run(tmp_path / "run")
    script = load_script("compact_samples")
    assert script.compact(tmp_path / "run", drop=[]) == (1, 0)
    assert script.compact(tmp_path / "run", drop=["teacher_*"]) == (0, 1)
    assert list((tmp_path / "run" / "samples").iterdir()) == []
    row = json.loads((tmp_path / "run" / "report" / "results.json").read_text())["rows"][1]
    assert row["samples"] is None and row["gen_ppl"] == {"x": 2.0}
    assert "samples/teacher_8.jsonl:" in row["samples_dropped"]
