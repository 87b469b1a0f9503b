"""Shaped distillation from the CLI on a tiny markov corpus; inference needs no compass."""

import csv
import json
import shutil

import pytest
import yaml

from tsdfm.cli import main
from tsdfm.data import load_prepared
from tsdfm.generation import draw_samples
from tsdfm.models import CausalConfig, CausalLM

TINY = {
    "name": "shape",
    "data": {
        "corpus": "markov",
        "seq_len": 16,
        "markov": {
            "vocab_size": 8,
            "order": 1,
            "alpha": 0.2,
            "num_train": 128,
            "num_valid": 16,
            "num_test": 16,
        },
    },
    "teacher": {
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2},
        "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "ckpt_every": 2, "log_every": 1},
    },
}
STUDENT = [
    "student.train.steps=2",
    "student.train.batch_size=4",
    "student.train.eval_every=2",
    "student.train.eval_batches=1",
    "student.train.log_every=1",
    "student.teacher_steps=16",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shape")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    data, teacher = root / "data", root / "teacher"
    common = ["--config", str(cfg), "--no-progress"]
    assert main(["data", "prepare", *common, "--out", str(data)]) == 0
    assert main(["train", "teacher", *common, "--data", str(data), "--out", str(teacher)]) == 0
    return root, cfg, data, teacher


def student_args(run, out, *flags):
    _, cfg, data, teacher = run
    return [
        "train",
        "student",
        "--config",
        str(cfg),
        "--teacher",
        str(teacher),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        *flags,
        *STUDENT,
    ]


@pytest.mark.parametrize("kind", ["oracle", "self"])
def test_shaping_cli(run, kind):
    out = run[0] / kind
    assert main(student_args(run, out, "--shaping", kind, "--candidates", "2")) == 0
    extra = json.loads((out / "model" / "config.json").read_text())["extra"]
    assert extra["method"] == "shaped" and extra["candidates"] == 2
    assert extra["compass"] == kind and extra["select"] == "argmin"
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert {"nav_gap", "nav_changed", "nav_gap_m1"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["student"]["shaping"]["candidates"] == 2 and summary["sec_per_step"] > 0


def test_navigation_window_is_recorded(run):
    """student.shaping.t_start (the navigation window) reaches the navigator and the artifact."""
    out = run[0] / "window"
    flags = ["--shaping", "oracle", "--candidates", "2", "student.shaping.t_start=0.5"]
    assert main(student_args(run, out, *flags)) == 0
    extra = json.loads((out / "model" / "config.json").read_text())["extra"]
    assert extra["t_start"] == 0.5 and extra["method"] == "shaped"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["student"]["shaping"]["t_start"] == 0.5


def test_shaped_student_samples_without_its_compass(run):
    root, _, data, _ = run
    prepared = load_prepared(data)
    tok = prepared.tokenizer
    lm = CausalLM(
        CausalConfig(
            tok.vocab_size,
            tok.num_classes,
            16,
            dim=16,
            n_layers=1,
            tokenizer_fingerprint=tok.fingerprint(),
        )
    )
    compass = lm.save_pretrained(root / "compass" / "model", tokenizer=tok).parent
    out = root / "ar"
    flags = ["--shaping", "compass", "--compass", str(compass), "--candidates", "2"]
    assert main(student_args(run, out, *flags, "--select", "softmax", "--tau", "0.5")) == 0
    shutil.rmtree(compass)
    s = draw_samples(out / "model", steps=4, num=3, progress=False)
    assert s.meta["nfe_actual"] == 4 and s.meta["nfe_nominal"] == 4
    assert s.meta["method"] == "shaped" and s.meta["candidates"] == 2 and s.meta["compass"] == "ar"
    assert s.ids.shape == (3, 16) and (s.ids < tok.num_classes).all()


def test_k1_shaping_is_the_blind_student(run):
    """--shaping oracle --candidates 1 runs the navigator and trains the blind student exactly."""
    root = run[0]
    assert main(student_args(run, root / "blind")) == 0
    assert main(student_args(run, root / "k1", "--shaping", "oracle", "--candidates", "1")) == 0
    loss = lambda d: [r["loss"] for r in csv.DictReader(open(d / "log.csv"))]  # noqa: E731
    assert loss(root / "blind") == loss(root / "k1")
    k1 = list(csv.DictReader(open(root / "k1" / "log.csv")))
    assert float(k1[-1]["nav_changed"]) == 0.0
    meta = json.loads((root / "k1" / "model" / "config.json").read_text())["extra"]
    assert meta["method"] == "blind" and meta["candidates"] == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shaping", "none", "--candidates", "2"], "--shaping none"),
        (["--shaping", "compass", "--candidates", "2"], "--compass DIR"),
        (["--shaping", "self", "--compass", "x"], "only used with --shaping compass"),
        (["--shaping", "oracle", "--candidates", "0"], "candidates"),
    ],
)
def test_shaping_flag_errors(run, flags, message, capsys):
    assert main(student_args(run, run[0] / "err", *flags)) == 2
    assert message in capsys.readouterr().err


def test_exact_anchor_from_the_cli(run):
    """--anchor oracle (issue 4's near-exact-teacher check) trains and is recorded."""
    out = run[0] / "exact"
    assert main(student_args(run, out, "--anchor", "oracle")) == 0
    extra = json.loads((out / "model" / "config.json").read_text())["extra"]
    assert extra["anchor"] == "oracle" and extra["method"] == "blind"
    assert json.loads((out / "summary.json").read_text())["student"]["anchor"] == "oracle"


def test_exact_joint_midpoints_from_the_cli(run, capsys):
    """--midpoint exact-joint (the ceiling of navigation) trains and is recorded; combined with
    navigation it is refused before anything is written."""
    out = run[0] / "joint"
    assert main(student_args(run, out, "--midpoint", "exact-joint")) == 0
    extra = json.loads((out / "model" / "config.json").read_text())["extra"]
    assert extra["midpoint"] == "exact-joint" and extra["method"] == "blind"
    refused = run[0] / "joint-shaped"
    args = student_args(run, refused, "--midpoint", "exact-joint", "--shaping", "oracle")
    assert main(args + ["--candidates", "2"]) == 2
    assert "cannot also be navigated" in capsys.readouterr().err
    assert not refused.exists()
