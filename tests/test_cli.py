"""End-to-end CLI smoke: prepare a tiny synthetic corpus, train, resume, sample, evaluate."""

import json

import pytest
import torch
import yaml

from tsdfm.cli import main

TINY = {
    "name": "smoke",
    "data": {
        "corpus": "markov",
        "seq_len": 16,
        "markov": {
            "vocab_size": 8,
            "order": 1,
            "alpha": 0.2,
            "num_train": 256,
            "num_valid": 32,
            "num_test": 32,
        },
    },
    "teacher": {
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2},
        "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "ckpt_every": 3, "log_every": 1},
    },
}


@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "smoke.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def test_prepare_train_resume_sample(tmp_path, cfg_file, capsys):
    data, out = tmp_path / "data", tmp_path / "teacher"
    assert (
        main(["data", "prepare", "--config", str(cfg_file), "--out", str(data), "--no-progress"])
        == 0
    )
    # a re-run is a no-op
    assert (
        main(["data", "prepare", "--config", str(cfg_file), "--out", str(data), "--no-progress"])
        == 0
    )
    args = [
        "train",
        "teacher",
        "--config",
        str(cfg_file),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args + ["teacher.train.steps=3"]) == 0
    # training again into the same dir without --resume is refused, nothing is lost
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    log = (out / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == [str(s) for s in range(1, 7)]
    samples = tmp_path / "s.jsonl"
    assert (
        main(
            [
                "sample",
                "--model",
                str(out / "model"),
                "--steps",
                "8",
                "--num",
                "4",
                "--out",
                str(samples),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["ids"]) == 16 for r in rows)
    meta = json.loads((tmp_path / "s.meta.json").read_text())
    assert (
        meta["steps"] == 8
        and meta["nfe_nominal"] == 8
        and meta["sampler"]["draw_precision"] == "float64"
    )
    assert meta["sampler"]["temperature"] == 1.0
    assert main(["evaluate", "--samples", str(samples), "--data", str(data)]) == 0
    assert "truth-NLL" in capsys.readouterr().out
    cold = tmp_path / "cold.jsonl"
    argv = ["sample", "--model", str(out / "model"), "--steps", "8", "--num", "4"]
    assert main([*argv, "--temperature", "0.5", "--out", str(cold)]) == 0
    assert json.loads((tmp_path / "cold.meta.json").read_text())["sampler"]["temperature"] == 0.5
    assert main([*argv, "--temperature", "0", "--out", str(cold)]) == 2
    assert "temperature" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--model", "/nonexistent/model", "--steps", "8"], "not found"),
        (["train", "teacher", "--config", "/nonexistent.yaml"], "config file not found"),
    ],
)
def test_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_override_exit_2(cfg_file, capsys):
    assert main(["data", "prepare", "--config", str(cfg_file), "data.seq_lenn=3"]) == 2
    assert "did you mean 'seq_len'" in capsys.readouterr().err


def test_overrides_may_interleave_with_flags(capsys):
    """``a=1 --flag b=2`` keeps both overrides, in order; a stray word is still refused."""
    from tsdfm.cli import _parse

    args = _parse(
        ["train", "student", "--shaping", "none", "a.b=1", "--no-progress", "c.d=2", "a.b=3"]
    )
    assert args.overrides == ["a.b=1", "c.d=2", "a.b=3"]
    assert args.no_progress and args.shaping == "none"
    with pytest.raises(SystemExit) as e:
        _parse(["train", "student", "a.b=1", "--no-progress", "stray"])
    assert e.value.code == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # commands without overrides take none
        _parse(["sample", "--model", "m", "--steps", "8", "x=1"])


def test_steps_below_one(tmp_path, cfg_file, capsys):
    data, out = tmp_path / "data", tmp_path / "teacher"
    main(["data", "prepare", "--config", str(cfg_file), "--out", str(data), "--no-progress"])
    main(
        [
            "train",
            "teacher",
            "--config",
            str(cfg_file),
            "--data",
            str(data),
            "--out",
            str(out),
            "--no-progress",
            "teacher.train.steps=1",
        ]
    )
    assert main(["sample", "--model", str(out / "model"), "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err


def test_sample_device_defaults_to_auto(tmp_path, cfg_file, capsys, monkeypatch):
    """`tsdfm sample` resolves `--device auto` (the default) like training does: this process's
    GPU when CUDA is available, else the CPU; a GPU machine never samples on its CPU by accident
    (seen on an H200: 2,048 samples at 1,024 steps ran on 16 CPU threads). Asking for cuda
    without one is a clear error."""
    import tsdfm.distributed as distributed

    data, out = tmp_path / "data", tmp_path / "teacher"
    main(["data", "prepare", "--config", str(cfg_file), "--out", str(data), "--no-progress"])
    main(["train", "teacher", "--config", str(cfg_file), "--data", str(data), "--out", str(out),
          "--no-progress", "teacher.train.steps=1"])  # fmt: skip
    asked, real = [], distributed.resolve_device
    monkeypatch.setattr(
        distributed, "resolve_device", lambda name, rank=0: asked.append(name) or real(name, rank)
    )
    argv = ["sample", "--model", str(out / "model"), "--steps", "2", "--num", "2"]
    assert main([*argv, "--out", str(tmp_path / "s.jsonl")]) == 0
    assert asked == ["auto"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "c.jsonl")]) == 0
    assert asked == ["auto", "cpu"]
    assert json.loads((tmp_path / "c.meta.json").read_text())["device"] == "cpu"
    capsys.readouterr()
    if not torch.cuda.is_available():
        assert main([*argv, "--device", "cuda", "--out", str(tmp_path / "g.jsonl")]) == 2
        assert "no CUDA" in capsys.readouterr().err


def test_student_cli(tmp_path, cfg_file, capsys):
    data, teacher, student = tmp_path / "data", tmp_path / "teacher", tmp_path / "student"
    main(["data", "prepare", "--config", str(cfg_file), "--out", str(data), "--no-progress"])
    main(
        [
            "train",
            "teacher",
            "--config",
            str(cfg_file),
            "--data",
            str(data),
            "--out",
            str(teacher),
            "--no-progress",
        ]
    )
    args = [
        "train",
        "student",
        "--config",
        str(cfg_file),
        "--teacher",
        str(teacher),
        "--data",
        str(data),
        "--out",
        str(student),
        "--no-progress",
        "student.train.steps=4",
        "student.train.batch_size=4",
        "student.teacher_steps=16",
        "student.train.eval_every=4",
    ]
    assert main(args) == 0
    cfgj = json.loads((student / "model" / "config.json").read_text())
    assert (
        cfgj["dt_cond"]
        and cfgj["extra"]["teacher"].endswith("model")
        and cfgj["extra"]["method"] == "blind"
    )
    out = tmp_path / "s.jsonl"
    assert (
        main(
            [
                "sample",
                "--model",
                str(student / "model"),
                "--steps",
                "4",
                "--num",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "s.meta.json").read_text())
    assert meta["nfe_actual"] == 4 and meta["method"] == "blind"
    # a student whose teacher is missing
    assert (
        main(
            args[:4]
            + [
                "--teacher",
                str(tmp_path / "gone"),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "teacher directory not found" in capsys.readouterr().err


def test_warm_start_extends_a_finished_teacher(tmp_path, cfg_file, capsys):
    """``teacher.init_from`` starts a new run (own schedule) from a teacher's weights, and
    refuses a teacher of another shape before writing anything."""
    from safetensors.torch import load_file

    data = tmp_path / "data"
    assert (
        main(["data", "prepare", "--config", str(cfg_file), "--out", str(data), "--no-progress"])
        == 0
    )
    base = ["train", "teacher", "--config", str(cfg_file), "--data", str(data), "--no-progress"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*base, "--out", str(first)]) == 0
    init = f"teacher.init_from={first / 'model'}"
    # one step at a negligible learning rate: the shipped model is the one it started from
    tiny_lr = ["teacher.train.steps=1", "teacher.train.lr=1e-9", "teacher.train.warmup_steps=0"]
    assert main([*base, "--out", str(second), init, *tiny_lr]) == 0
    assert "warm start" in capsys.readouterr().out
    a = load_file(str(first / "model" / "model.safetensors"))
    b = load_file(str(second / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    cold = tmp_path / "cold"
    assert main([*base, "--out", str(cold), *tiny_lr]) == 0
    c = load_file(str(cold / "model" / "model.safetensors"))
    assert not all(torch.allclose(a[k], c[k], atol=1e-3) for k in a)
    assert yaml.safe_load((second / "config.yaml").read_text())["teacher"]["init_from"] == str(
        first / "model"
    )
    assert json.loads((second / "summary.json").read_text())["init_from"] == str(first / "model")
    # another width: refused with the field named, no run directory left behind
    wide = tmp_path / "wide"
    assert main([*base, "--out", str(wide), init, "teacher.model.dim=48"]) == 2
    err = capsys.readouterr().err
    assert "dim: 32 there, 48 here" in err and not wide.exists()
    assert main([*base, "--out", str(wide), f"teacher.init_from={tmp_path / 'nope'}"]) == 2
    assert "not found" in capsys.readouterr().err and not wide.exists()
