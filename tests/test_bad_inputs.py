"""Every bad input of issue 8 through the real CLI: exit code 2, one message, nothing left behind.

One table row per fault. Each row runs ``tsdfm ...`` in-process inside a shared "world" (tiny
prepared data sets, a trained teacher, a file standing where a directory should be) and checks
three things: the exit code is 2, stderr is one ``error:`` line that names the problem *and*
the fix, and the world's file listing is unchanged (no partial output directories).
"""

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_cli import TINY

from tsdfm.cli import main


def _cli(*argv: str) -> list[str]:
    return [*argv, "--no-progress"] if argv[0] in ("train", "data") else list(argv)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("world")
    (w / "cfg.yaml").write_text(yaml.safe_dump(TINY))
    typo = {**TINY, "teacher": {"trian": {"steps": 3}}}
    (w / "typo.yaml").write_text(yaml.safe_dump(typo))
    (w / "notes.txt").write_text("a file where a directory is expected\n")
    (w / "empty.txt").write_text("   \n\n\t\n")
    prep = ["data", "prepare", "--config", str(w / "cfg.yaml")]
    assert main(_cli(*prep, "--out", str(w / "data"))) == 0
    other_vocab = "data.markov.vocab_size=12"
    assert main(_cli(*prep, "--out", str(w / "data-v12"), other_vocab)) == 0
    assert main(_cli(*prep, "--out", str(w / "data-l32"), "data.seq_len=32")) == 0
    teacher = ["train", "teacher", "--config", str(w / "cfg.yaml"), "--data", str(w / "data")]
    assert main(_cli(*teacher, "--out", str(w / "teacher"), "teacher.train.steps=2")) == 0
    return w


def _corrupt_copy(src: str, dst: str, file: str, truncate: bool = False):
    """Setup: copy an artifact directory and damage one file in the copy."""

    def setup(w: Path, monkeypatch) -> None:
        shutil.copytree(w / src, w / dst, dirs_exist_ok=True)
        path = w / dst / file
        raw = bytearray(path.read_bytes())
        if truncate:
            raw = raw[: len(raw) // 2]
        else:
            raw[len(raw) // 2] ^= 0x10
        path.write_bytes(bytes(raw))

    return setup


def _edited_model(dst: str, edit: Callable[[dict, dict], None]):
    """Setup: copy the teacher's model and edit its config.json and/or weights, then rewrite
    its manifest, so every checksum matches and only the content is wrong (issue 32)."""

    def setup(w: Path, monkeypatch) -> None:
        from safetensors.torch import load_file, save_file

        from tsdfm.artifacts import write_manifest

        shutil.copytree(w / "teacher/model", w / dst, dirs_exist_ok=True)
        cfg = json.loads((w / dst / "config.json").read_text())
        weights = load_file(w / dst / "model.safetensors")
        edit(cfg, weights)
        (w / dst / "config.json").write_text(json.dumps(cfg))
        save_file(weights, w / dst / "model.safetensors")
        write_manifest(w / dst)

    return setup


def _poison(cfg: dict, weights: dict) -> None:
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[name][..., 0] = float("nan")


def _garbage(w: Path, monkeypatch) -> None:
    (w / "garbage.jsonl").write_bytes(bytes(range(128, 256)) * 8)


def _disk_nearly_full(w: Path, monkeypatch) -> None:
    usage = shutil.disk_usage(w)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096))


@dataclass
class Row:
    id: str
    argv: list[str]  # {w} is the world directory
    problem: str  # regex naming the problem
    fix: str  # regex naming the fix
    setup: Callable | None = None


TEACHER = ["train", "teacher", "--config", "{w}/cfg.yaml", "--data", "{w}/data"]
STUDENT = ["train", "student", "--config", "{w}/cfg.yaml", "--teacher", "{w}/teacher"]
STUDENT_OK = [*STUDENT, "--data", "{w}/data", "--out", "{w}/out/student"]
PREPARE = ["data", "prepare", "--config", "{w}/cfg.yaml"]
SAMPLE = ["sample", "--model", "{w}/teacher/model", "--num", "2", "--steps", "2"]
GENERATE = ["generate", "--model", "{w}/teacher", "--num", "2"]

ROWS = [
    # configuration
    Row(
        "unknown-override-key",
        [*TEACHER, "--out", "{w}/out/t", "teacher.train.stepz=3"],
        r"unknown config key config\.teacher\.train\.stepz",
        r"did you mean 'steps'",
    ),
    Row(
        "mistyped-key-in-file",
        ["train", "teacher", "--config", "{w}/typo.yaml", "--data", "{w}/data"],
        r"unknown config key config\.teacher\.trian",
        r"did you mean 'train'",
    ),
    Row(
        "train-steps-0",
        [*TEACHER, "--out", "{w}/out/t", "teacher.train.steps=0"],
        r"teacher\.train\.steps must be > 0",
        r"got 0",
    ),
    Row(
        "non-finite-lr",
        [*TEACHER, "--out", "{w}/out/t", "teacher.train.lr=.nan"],
        r"teacher\.train\.lr",
        r"must be a finite number",
    ),
    # sampling ranges
    Row("sample-steps-0", [*SAMPLE[:-1], "0"], r"steps must be >= 1", r"whole number"),
    Row("generate-steps-0", [*GENERATE, "--steps", "0"], r"steps must be", r">= 1"),
    Row("sample-top-p", [*SAMPLE, "--top-p", "1.5"], r"top_p", r"in \(0, 1\]"),
    Row(
        "generate-seq-len-above-L",
        [*GENERATE, "--seq-len", "64"],
        r"seq_len 64 is larger than the model's length 16",
        r"at most 16",
    ),
    # shaping ranges
    Row(
        "candidates-0",
        [*STUDENT_OK, "--shaping", "self", "--candidates", "0"],
        r"candidates \(K\) must be >= 1",
        r"use 1 for blind",
    ),
    Row(
        "tau-0",
        [
            *STUDENT_OK,
            "--shaping",
            "self",
            "--candidates",
            "2",
            "--select",
            "softmax",
            "--tau",
            "0",
        ],
        r"tau must be > 0",
        r"e\.g\. 1\.0",
    ),
    Row(
        "tau-negative-override",
        [*STUDENT_OK, "student.shaping.tau=-1"],
        r"tau must be > 0",
        r"select=argmin",
    ),
    Row(
        "t-start-out-of-range",
        [*STUDENT_OK, "student.shaping.t_start=1"],
        r"t_start must be in \[0, 1\)",
        r"navigates all",
    ),
    # corpora and data
    Row(
        "empty-corpus",
        [*PREPARE, "--out", "{w}/runs/x/data", "data.corpus={w}/empty.txt"],
        r"holds no non-empty documents",
        r"put text in it",
    ),
    Row(
        "missing-corpus",
        [*PREPARE, "--out", "{w}/runs/x/data", "data.corpus={w}/nope.txt"],
        r"neither a built-in corpus",
        r"fix data\.corpus",
    ),
    Row(
        "missing-data-dir",
        [*TEACHER[:-1], "{w}/nodata", "--out", "{w}/out/t"],
        r"no complete prepared data",
        r"tsdfm data prepare",
    ),
    Row(
        "corrupt-train-bin",
        [*TEACHER[:-1], "{w}/data-bad", "--out", "{w}/out/t"],
        r"data-bad/train\.bin is missing or does not match its sha256",
        r"re-run `tsdfm data prepare`",
        _corrupt_copy("data", "data-bad", "train.bin"),
    ),
    # models
    Row(
        "tokenizer-mismatch",
        [*STUDENT, "--data", "{w}/data-v12", "--out", "{w}/out/student"],
        r"trained with another tokenizer",
        r"use the data the teacher was trained on",
    ),
    Row(
        "data-longer-than-teacher",
        [*STUDENT, "--data", "{w}/data-l32", "--out", "{w}/out/student"],
        r"data seq_len 32 exceeds the teacher's max length 16",
        r"data\.seq_len <= 16",
    ),
    Row(
        "teacher-missing",
        [*STUDENT_OK[:4], "--teacher", "{w}/gone", *STUDENT_OK[6:]],
        r"teacher directory not found: .*gone",
        r"train it first with `tsdfm train teacher`",
    ),
    Row(
        "teacher-missing-shaped",
        [*STUDENT_OK[:4], "--teacher", "{w}/gone", *STUDENT_OK[6:], "--shaping", "self"],
        r"teacher directory not found",
        r"tsdfm train teacher",
    ),
    Row(
        "bit-flipped-safetensors",
        [*SAMPLE[:2], "{w}/model-flip", *SAMPLE[3:], "--out", "{w}/out/s.jsonl"],
        r"model-flip/model\.safetensors is corrupt",
        r"restore it or re-create",
        _corrupt_copy("teacher/model", "model-flip", "model.safetensors"),
    ),
    Row(
        "truncated-safetensors",
        [GENERATE[0], "--model", "{w}/model-cut", *GENERATE[3:]],
        r"model-cut/model\.safetensors is corrupt",
        r"restore it or re-create",
        _corrupt_copy("teacher/model", "model-cut", "model.safetensors", truncate=True),
    ),
    # where outputs go
    Row(
        "teacher-out-under-a-file",
        [*TEACHER, "--out", "{w}/notes.txt/run"],
        r"notes\.txt is a file, not a directory",
        r"choose another --out",
    ),
    Row(
        "student-out-under-a-file",
        [*STUDENT, "--data", "{w}/data", "--out", "{w}/notes.txt/run"],
        r"cannot be created",
        r"choose another --out",
    ),
    Row(
        "data-out-under-a-file",
        [*PREPARE, "--out", "{w}/notes.txt/data"],
        r"notes\.txt is a file",
        r"choose another --out",
    ),
    Row(
        "sample-out-under-a-file",
        [*SAMPLE, "--out", "{w}/notes.txt/s.jsonl"],
        r"notes\.txt is a file",
        r"choose another --out",
    ),
    # issue 32: outputs on a file, a directory or a virtual file system
    Row(
        "pipeline-run-dir-is-a-file",
        ["pipeline", "--config", "{w}/cfg.yaml", "--run-dir", "{w}/notes.txt", "--no-progress"],
        r"notes\.txt is a file",
        r"choose another --out",
    ),
    Row(
        "data-out-is-a-file",
        [*PREPARE, "--out", "{w}/notes.txt"],
        r"notes\.txt is a file",
        r"choose another --out",
    ),
    Row(
        "sample-out-is-a-directory",
        [*SAMPLE, "--out", "{w}/data"],
        r"data is an existing directory",
        r"name a file",
    ),
    Row(
        "sample-out-under-proc",
        [*SAMPLE, "--out", "/proc/tsdfm/s.jsonl"],
        r"/proc/tsdfm is on a virtual file system",
        r"choose another --out",
    ),
    Row(
        "data-out-under-proc",
        [*PREPARE, "--out", "/proc/tsdfm"],
        r"virtual file system",
        r"choose another --out",
    ),
    Row(
        "teacher-out-under-sys",
        [*TEACHER, "--out", "/sys/tsdfm"],
        r"virtual file system",  # not "not enough disk space"
        r"choose another --out",
    ),
    Row(
        "pipeline-under-proc",
        ["pipeline", "--config", "{w}/cfg.yaml", "--run-dir", "/proc/tsdfm", "--no-progress"],
        r"virtual file system",
        r"choose another --out",
    ),
    Row(
        "evaluate-binary-samples",
        [
            "evaluate",
            "--samples",
            "{w}/garbage.jsonl",
            "--data",
            "{w}/data",
            "--out",
            "{w}/out/eval",
        ],
        r"garbage\.jsonl is not a samples file",
        r"samples\.jsonl written by `tsdfm sample`",
        _garbage,
    ),
    Row(
        "config-json-size-mismatch",
        [*SAMPLE[:2], "{w}/model-dim", *SAMPLE[3:], "--out", "{w}/out/s.jsonl"],
        r"model-dim/config\.json is inconsistent with .*size mismatch",
        r"restore the model directory",
        _edited_model("model-dim", lambda cfg, weights: cfg.update(dim=64, n_heads=2)),
    ),
    Row(
        "config-json-n-heads-0",
        [GENERATE[0], "--model", "{w}/model-heads", *GENERATE[3:]],
        r"model-heads/config\.json is inconsistent .*n_heads = 0",
        r"restore the model directory",
        _edited_model("model-heads", lambda cfg, weights: cfg.update(n_heads=0)),
    ),
    Row(
        "non-finite-weights",
        [*SAMPLE[:2], "{w}/model-nan", *SAMPLE[3:], "--out", "{w}/out/s.jsonl"],
        r"model-nan/model\.safetensors holds non-finite weights",
        r"Re-train it",
        _edited_model("model-nan", _poison),
    ),
    # issue 32: data prepared from another config
    Row(
        "data-from-another-config",
        [*TEACHER[:-1], "{w}/data-l32", "--out", "{w}/out/t"],
        r"data-l32 was prepared from another data config \(data\.seq_len: 32 there, 16 here",
        r"tsdfm data prepare --config",
    ),
    Row(
        "disk-full-teacher",
        [*TEACHER, "--out", "{w}/out/t"],
        r"not enough disk space for a checkpoint",
        r"free some space or choose another --out",
        _disk_nearly_full,
    ),
    Row(
        "disk-full-student",
        STUDENT_OK,
        r"not enough disk space",
        r"free some space",
        _disk_nearly_full,
    ),
]


def listing(root: Path) -> list[tuple[str, int]]:
    return sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size if p.is_file() else -1)
        for p in root.rglob("*")
    )


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_exits_2_with_one_message_and_no_output(world, row, monkeypatch, capsys):
    monkeypatch.chdir(world)  # default output paths (runs/...) land inside the world too
    if row.setup is not None:
        row.setup(world, monkeypatch)
    before = listing(world)
    capsys.readouterr()
    code = main(_cli(*(a.format(w=world) for a in row.argv)))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(row.problem, err), err
    assert re.search(row.fix, err), err
    assert listing(world) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_read_only_output_directory(world, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    argv = [a.format(w=world) for a in TEACHER] + ["--out", str(locked / "t")]
    assert main(_cli(*argv)) == 2
    assert "not writable" in capsys.readouterr().err
    assert not any(locked.iterdir())
