"""benchmarks/speed.py: the quick random-weights run writes the JSON and markdown it promises."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tsdfm.data.tokenizer import Tokenizer
from tsdfm.models import CausalConfig, CausalLM, Denoiser, DenoiserConfig

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
ROW_KEYS = {
    "model", "steps", "batch", "forward_cache", "nfe_nominal", "nfe_actual", "seconds_median",
    "seconds_runs", "repeats", "ms_per_sample", "tokens_per_second", "precision", "compiled",
    "head_at_jumps",
}  # fmt: skip


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check(result: dict, out: Path, batches: list[int], student_steps: list[int]) -> None:
    on_disk = json.loads((out / "speed-quick.json").read_text())
    assert on_disk["rows"] == result["rows"]
    for key in ("threads", "torch", "seq_len", "batch_sizes", "repeats", "models", "speedups"):
        assert key in on_disk
    assert on_disk["threads"] == torch.get_num_threads() and on_disk["quick"] is True
    rows = on_disk["rows"]
    assert all(set(r) == ROW_KEYS for r in rows)
    per_batch = len(student_steps) + 3  # teacher uncached + cached, AR
    assert len(rows) == per_batch * len(batches)
    cached = [r for r in rows if r["model"] == "teacher" and r["forward_cache"]]
    assert all(r["nfe_actual"] <= r["nfe_nominal"] for r in cached)
    for b in batches:
        ratios = on_disk["speedups"][str(b)]
        assert set(ratios) == {
            f"student8_vs_{k}" for k in ("teacher_uncached", "teacher_cached", "ar")
        }
    md = (out / "speed-quick.md").read_text()
    assert "| teacher |" in md and "student8_vs_teacher_cached" in md


def test_quick_random_small(speed, tmp_path):
    argv = ["--quick", "--random", "--out", str(tmp_path), "--repeats", "1", "--warmup", "0"]
    result = speed.main(
        [*argv, "--student-steps", "1", "8", "--teacher-steps", "8", "--teacher-repeats", "2"]
    )
    _check(result, tmp_path, [1, 4], [1, 8])
    for r in result["rows"]:  # only the uncached teacher takes the separate repeat count
        uncached_teacher = r["model"] == "teacher" and not r["forward_cache"]
        assert r["repeats"] == len(r["seconds_runs"]) == (2 if uncached_teacher else 1)


@pytest.mark.slow
def test_quick_random_default_settings(speed, tmp_path):
    result = speed.main(["--quick", "--random", "--out", str(tmp_path)])
    _check(result, tmp_path, [1, 4], [1, 2, 4, 8, 16])
    assert result["repeats"] == 2 and all(len(r["seconds_runs"]) == 2 for r in result["rows"])


def test_given_model_dirs_are_used(speed, tmp_path):
    tok = Tokenizer.identity(8)
    Denoiser(DenoiserConfig(9, 8, 12, 32, 1, 2)).save_pretrained(tmp_path / "t" / "model", tok)
    CausalLM(CausalConfig(9, 8, 12, 32, 1, 2)).save_pretrained(tmp_path / "ar", tok)
    argv = ["--quick", "--teacher", str(tmp_path / "t"), "--ar", str(tmp_path / "ar")]
    result = speed.main(
        [*argv, "--out", str(tmp_path), "--repeats", "1", "--warmup", "0", "--batch-sizes", "2"]
        + ["--student-steps", "8", "--teacher-steps", "4"]
    )
    assert result["seq_len"] == 12 and result["models"]["teacher"]["random"] is False
    assert result["models"]["student"]["random"] is True  # built from the given teacher
    with pytest.raises(SystemExit, match="wrong kind"):
        speed.main(["--quick", "--teacher", str(tmp_path / "ar"), "--out", str(tmp_path)])


def test_full_runs_need_five_repeats(speed):
    with pytest.raises(SystemExit):
        speed.parse(["--repeats", "3"])
    args = speed.parse([])
    assert (args.batch_sizes, args.teacher_steps, args.repeats) == ([1, 32], 1024, 5)


def test_bf16_variant_rows(speed, tmp_path):
    argv = ["--quick", "--random", "--out", str(tmp_path), "--repeats", "1", "--warmup", "0"]
    result = speed.main(
        [
            *argv,
            "--student-steps",
            "8",
            "--batch-sizes",
            "2",
            "--variants",
            "bf16",
            "--skip-teacher",
        ]
    )
    rows = [(r["model"], r["precision"], r["compiled"]) for r in result["rows"]]
    assert rows == [("student", "fp32", False), ("student", "bf16", False), ("ar", "fp32", False)]
    assert {"student8_bf16_vs_fp32", "student8_bf16_vs_ar", "student8_vs_ar"} <= set(
        result["speedups"]["2"]
    )
    assert "student (bf16 autocast)" in (tmp_path / "speed-quick.md").read_text()


def test_full_head_variant_row(speed, tmp_path):
    """The in-run reference: the same student with the full [B, L, V] head every step."""
    argv = ["--quick", "--random", "--out", str(tmp_path), "--repeats", "1", "--warmup", "0"]
    result = speed.main(
        [*argv, "--student-steps", "8", "--batch-sizes", "2", "--variants", "full-head"]
        + ["--skip-teacher"]
    )
    rows = [(r["model"], r["head_at_jumps"]) for r in result["rows"]]
    assert rows == [("student", True), ("student", False), ("ar", None)]
    assert "student8_head_at_jumps_vs_full_head" in result["speedups"]["2"]
    assert "student (full head)" in (tmp_path / "speed-quick.md").read_text()


def test_rows_are_timed_round_robin(speed):
    """A drifting load must fall on every row alike: round r times each row once (seed r), and
    a row with fewer repeats (the uncached teacher) drops out of the later rounds only."""
    calls = []

    def row(name, repeats):
        def call(steps, seed):
            calls.append((name, seed))
            meta = {"seconds": 1.0, "steps": steps, "nfe_nominal": steps, "nfe_actual": steps}
            return meta | {"seq_len": 4, "sampler": {"forward_cache": False}}

        return {"model": name, "steps": 2, "batch": 1, "cache": False, "precision": "fp32",
                "compiled": False, "is_ar": False, "repeats": repeats, "call": call, "metas": []}  # fmt: skip

    args = type("Args", (), {"warmup": 1})()
    out = speed.measure([row("a", 3), row("b", 1), row("c", 3)], args)
    timed = [c for c in calls if c[1] < 10_000]
    assert timed == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("c", 1), ("a", 2), ("c", 2)]
    assert [r["repeats"] for r in out] == [3, 1, 3]


def test_compare_student_is_timed_beside_the_student(speed, tmp_path):
    """``--compare DIR``: a chain student timed at the headline steps, its cost as a ratio."""
    from tsdfm.models import build_student

    tok = Tokenizer.identity(8)
    teacher = Denoiser(DenoiserConfig(9, 8, 12, 32, 1, 2))
    teacher.save_pretrained(tmp_path / "t" / "model", tok)
    chain = build_student(teacher, latent_codes=3, latent_chain=True)
    chain.save_pretrained(tmp_path / "chain", tok)
    argv = ["--quick", "--teacher", str(tmp_path / "t"), "--compare", str(tmp_path / "chain")]
    result = speed.main(
        [*argv, "--out", str(tmp_path), "--repeats", "1", "--warmup", "0", "--batch-sizes", "2"]
        + ["--student-steps", "8", "--teacher-steps", "4", "--skip-teacher"]
    )
    rows = [r for r in result["rows"] if r["model"] == "compare"]
    assert [(r["steps"], r["batch"], r["nfe_nominal"]) for r in rows] == [(8, 2, 8)]
    ratio = result["speedups"]["2"]["compare8_cost_vs_student"]
    student = next(r for r in result["rows"] if r["model"] == "student")
    assert ratio == pytest.approx(rows[0]["seconds_median"] / student["seconds_median"])
    paired = result["speedups"]["2"]["compare8_cost_vs_student_paired"]
    assert paired == pytest.approx(rows[0]["seconds_runs"][0] / student["seconds_runs"][0])
    with pytest.raises(SystemExit, match="not a student"):
        speed.main([*argv[:3], "--compare", str(tmp_path / "t"), "--out", str(tmp_path)])


def test_paired_ratio_is_the_median_of_per_round_ratios(speed):
    """A load spike in round 2 slows both rows: each round's ratio keeps the cost (2, 1.11, 3
    -> 2) where the ratio of medians (3 / 1) pairs round 3's compare with another round."""
    a, b = {"seconds_runs": [2.0, 10.0, 3.0]}, {"seconds_runs": [1.0, 9.0, 1.0]}
    assert speed.paired_ratio(a, b) == pytest.approx(2.0)
    assert speed.paired_ratio(b, a) == pytest.approx(1 / 2)
