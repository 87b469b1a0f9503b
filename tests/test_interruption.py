"""Interrupting a real ``tsdfm train teacher`` process, then ``--resume``: same losses, exactly.

The in-process versions (a simulated crash, a self-sent SIGTERM) live in test_training.py;
here the training runs in a separate Python process that is killed from outside, the way a
scheduler or an impatient user does it. To make the kill land mid-run on any machine, the
child sleeps a little before each batch (a wrapper around the real CLI; the arithmetic is
untouched). Everything runs single-threaded so the uninterrupted reference is bit-comparable.
"""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_cli import TINY

from tsdfm.cli import main
from tsdfm.training.checkpoint import CheckpointManager
from tsdfm.training.objectives import DenoisingObjective

STEPS, CKPT_EVERY = 20, 5
SLEEP_S = 0.05  # per batch in the child, so a signal reliably arrives mid-run
CONFIG = {
    **TINY,
    "teacher": {
        "model": TINY["teacher"]["model"],
        "train": {
            **TINY["teacher"]["train"],
            "steps": STEPS,
            "ckpt_every": CKPT_EVERY,
            "eval_every": 10,
            "eval_batches": 2,
            "num_threads": 1,
        },
    },
}
SLOW_CLI = """
import sys, time
from tsdfm.training import loop
_batch = loop.BatchStream.batch
def _slow_batch(self, step):
    time.sleep(float(sys.argv[1]))
    return _batch(self, step)
loop.BatchStream.batch = _slow_batch
from tsdfm.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Prepared data and the uninterrupted reference run, shared by every test here."""
    root = tmp_path_factory.mktemp("interrupt")
    (root / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    assert main(["data", "prepare", "--config", str(root / "cfg.yaml"), "--out", str(root / "data"), "--no-progress"]) == 0  # fmt: skip
    assert main(train_args(root, root / "ref")) == 0
    return root


def train_args(root: Path, out: Path) -> list[str]:
    cfg, data = str(root / "cfg.yaml"), str(root / "data")
    return ["train", "teacher", "--config", cfg, "--data", data, "--out", str(out), "--no-progress"]


def log_rows(run: Path, name: str = "log.csv") -> list[dict[str, str]]:
    """The rows of a CSV log without wall-clock columns (those differ between any two runs)."""
    with open(run / name, newline="") as f:
        return [
            {k: v for k, v in row.items() if k not in ("tokens_per_s", "elapsed_s")}
            for row in csv.DictReader(f)
        ]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model/model.safetensors"), load_file(b / "model/model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def start_slow_run(root: Path, out: Path, sleep_s: float = SLEEP_S) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, str(sleep_s), *train_args(root, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout_s: float = 120) -> None:
    pointer = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + timeout_s
    while not pointer.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended before its first checkpoint:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared in time")
        time.sleep(0.01)


def assert_checkpoints_intact(ckpt_dir: Path) -> int:
    """Every checkpoint the index lists is whole and loads; returns the latest step."""
    manager = CheckpointManager(ckpt_dir)
    state, step = manager.load_latest()
    assert state["step"] == step
    for entry in manager._index():
        torch.load(ckpt_dir / entry["file"], map_location="cpu", weights_only=False)
    return step


@pytest.mark.slow
def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(setup, capsys):
    out = setup / "killed"
    proc = start_slow_run(setup, out)
    wait_for_checkpoint(proc, out)
    time.sleep(2.5 * SLEEP_S)  # land between checkpoints: some logged steps are then lost
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()
    assert not (out / "model").exists()
    step = assert_checkpoints_intact(out / "checkpoints")
    logged = int(log_rows(out)[-1]["step"])
    assert step % CKPT_EVERY == 0 and 0 <= logged - step <= CKPT_EVERY  # lost work in steps
    assert main(train_args(setup, out) + ["--resume"]) == 0
    assert f"resumed from step {step}" in capsys.readouterr().out
    assert log_rows(out) == log_rows(setup / "ref")
    assert log_rows(out, "eval.csv") == log_rows(setup / "ref", "eval.csv")
    assert same_weights(out, setup / "ref")
    assert not list((out / "checkpoints").glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_saves_a_checkpoint_and_loses_nothing(setup, signum, capsys):
    out = setup / f"stopped-{signum}"
    proc = start_slow_run(setup, out)
    wait_for_checkpoint(proc, out)
    proc.send_signal(signum)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout
    assert f"stopped by signal {int(signum)}" in stdout and "--resume" in stdout
    step = assert_checkpoints_intact(out / "checkpoints")
    assert int(log_rows(out)[-1]["step"]) == step  # nothing lost: the stop step is saved
    assert main(train_args(setup, out) + ["--resume"]) == 0
    assert log_rows(out) == log_rows(setup / "ref")
    assert same_weights(out, setup / "ref")


def test_disk_full_mid_run_keeps_the_last_checkpoint(setup, monkeypatch, capsys):
    """The disk fills after the first checkpoint: exit 2, checkpoint intact, resume is exact."""
    out = setup / "diskfull"
    real = shutil.disk_usage

    def filling_disk(path):
        usage = real(path)
        full = list((out / "checkpoints").glob("step_*.pt"))
        return usage._replace(free=4096) if full else usage

    monkeypatch.setattr(shutil, "disk_usage", filling_disk)
    assert main(train_args(setup, out)) == 2
    assert "not enough disk space" in capsys.readouterr().err
    assert assert_checkpoints_intact(out / "checkpoints") == CKPT_EVERY
    monkeypatch.setattr(shutil, "disk_usage", real)  # space freed
    assert main(train_args(setup, out) + ["--resume"]) == 0
    assert log_rows(out) == log_rows(setup / "ref")
    assert same_weights(out, setup / "ref")


def test_nan_storm_stops_cleanly_with_a_good_checkpoint(setup, monkeypatch, capsys):
    """From step 8 on every loss is NaN: skipped, counted, then a clear stop (exit 2)."""
    out = setup / "nan"
    real = DenoisingObjective.__call__
    calls = {"train": 0}

    def poisoned(self, model, x1, g):
        loss, metrics = real(self, model, x1, g)
        if model.training:
            calls["train"] += 1
            if calls["train"] >= 8:
                loss = loss * float("nan")
        return loss, metrics

    monkeypatch.setattr(DenoisingObjective, "__call__", poisoned)
    assert main(train_args(setup, out) + ["teacher.train.max_bad_steps=4"]) == 2
    captured = capsys.readouterr()
    assert "4 consecutive non-finite steps" in captured.err and "--resume" in captured.err
    assert captured.out.count("non-finite loss/gradient, step skipped") == 4
    state, step = CheckpointManager(out / "checkpoints").load_latest()
    assert step == CKPT_EVERY and state["bad_steps"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "model").exists()

    # The advice works: --resume with a lower learning rate is accepted, applied and recorded.
    monkeypatch.setattr(DenoisingObjective, "__call__", real)
    lr = CONFIG["teacher"]["train"].get("lr", 1e-3)
    lower = ["teacher.train.max_bad_steps=4", f"teacher.train.lr={lr / 10}"]
    assert main(train_args(setup, out) + ["--resume", *lower]) == 0
    assert "resume applies: teacher.train.lr" in capsys.readouterr().out
    assert yaml.safe_load((out / "config.yaml").read_text())["teacher"]["train"]["lr"] == lr / 10
    ref = {r["step"]: float(r["lr"]) for r in log_rows(setup / "ref")}
    resumed = [(r["step"], float(r["lr"])) for r in log_rows(out)]
    assert [s for s, _ in resumed] == list(ref)  # no duplicate or missing rows
    for step, value in resumed[CKPT_EVERY:]:  # the new schedule: the old one, a tenth as high
        assert value == pytest.approx(ref[step] / 10, rel=1e-6)
