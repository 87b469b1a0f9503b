"""Shared training loop: loss goes down, resume is exact, faults are handled."""

import csv
import os
import signal

import numpy as np
import pytest
import torch

from tsdfm.config import TrainConfig
from tsdfm.errors import TsdfmError
from tsdfm.models import Denoiser, DenoiserConfig
from tsdfm.training.checkpoint import CheckpointManager
from tsdfm.training.loop import BatchStream, Trainer
from tsdfm.training.objectives import DenoisingObjective

V, L = 8, 12


def data(n=64, seed=0):
    """Sequences with strong structure: x[i+1] = (x[i] + 1) % V."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, V, size=(n, 1))
    return (start + np.arange(L)[None]) % V


def make_trainer(out, steps=20, source="mask", objective=None, **kw):
    torch.manual_seed(0)
    model = Denoiser(
        DenoiserConfig(
            vocab_size=V + 1,
            num_classes=V,
            max_len=L,
            dim=32,
            n_layers=2,
            n_heads=2,
            time_cond=source == "uniform",
        )
    )
    obj = objective or DenoisingObjective(source, "polynomial", 1.0, V, V)
    kw.setdefault("lr", 3e-3)
    kw.setdefault("ema_decay", 0.8)
    cfg = TrainConfig(
        steps=steps,
        batch_size=8,
        warmup_steps=3,
        eval_every=10,
        eval_batches=2,
        ckpt_every=10,
        log_every=1,
        **kw,
    )
    return Trainer(model, obj, data(), data(16, seed=1), cfg, out, progress=False)


def losses(out):
    with open(out / "log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_loss_decreases(tmp_path, source):
    tr = make_trainer(tmp_path, steps=200, source=source, lr=1e-2)
    first = tr.validate(tr.model)
    res = tr.fit()
    assert res.final_val_loss < first - 0.3
    assert (tmp_path / "checkpoints" / "latest.json").exists()


class Crash(Exception):
    pass


def test_resume_is_exact(tmp_path):
    full = make_trainer(tmp_path / "a")
    full.fit()
    ref = losses(tmp_path / "a")

    crashing = make_trainer(tmp_path / "b")
    inner = crashing.objective

    def objective(model, x1, g):
        if crashing.step == 15:  # a hard crash between checkpoints (at 10 and 20)
            raise Crash
        return inner(model, x1, g)

    crashing.objective = objective
    with pytest.raises(Crash):
        crashing.fit()
    resumed = make_trainer(tmp_path / "b")
    resumed.fit(resume=True)
    assert losses(tmp_path / "b") == ref  # steps 1..20 exactly, no duplicates
    a = torch.load(tmp_path / "a/checkpoints/step_0000020.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b/checkpoints/step_0000020.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_at_step_replays_a_capped_run(tmp_path):
    """A run cut short at step 13 keeps the full schedule: its losses are the first 13 of the
    uncut run's, and it ends like a time cap (final checkpoint, model shipped)."""
    make_trainer(tmp_path / "a").fit()
    cut = make_trainer(tmp_path / "b", stop_at_step=13).fit()
    assert cut.steps == 13 and not cut.interrupted
    assert losses(tmp_path / "b") == losses(tmp_path / "a")[:13]
    assert (tmp_path / "b/checkpoints/step_0000013.pt").exists()
    again = make_trainer(tmp_path / "b", stop_at_step=13).fit(resume=True)
    assert again.steps == 13  # resuming a finished replay takes no extra step
    assert losses(tmp_path / "b") == losses(tmp_path / "a")[:13]
    with pytest.raises(TsdfmError, match="stop_at_step"):
        TrainConfig(stop_at_step=-1).validate("teacher.train")


def test_a_stop_at_an_eval_step_logs_that_validation_once(tmp_path):
    """stop_at_step on the eval cadence: one eval.csv row for the step (it was logged twice),
    the same value as the uncut run's at that step, and the run ships that validation."""
    make_trainer(tmp_path / "a").fit()
    cut = make_trainer(tmp_path / "b", stop_at_step=10).fit()
    with open(tmp_path / "b" / "eval.csv") as f:
        rows = [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f)]
    with open(tmp_path / "a" / "eval.csv") as f:
        uncut = [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f)]
    assert rows == uncut[:1] and rows[0][0] == 10
    assert cut.val_losses["ema"] == pytest.approx(rows[0][1], abs=1e-6)


def test_sigterm_saves_and_resumes(tmp_path):
    ref_tr = make_trainer(tmp_path / "a")
    ref_tr.fit()
    tr = make_trainer(tmp_path / "b")
    inner = tr.objective

    def objective(model, x1, g):
        if tr.step == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return inner(model, x1, g)

    tr.objective = objective
    res = tr.fit()
    assert res.interrupted and res.steps == 8
    assert CheckpointManager(tmp_path / "b/checkpoints").load_latest()[1] == 8
    make_trainer(tmp_path / "b").fit(resume=True)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")


def test_nonfinite_steps_skipped_then_stop(tmp_path):
    tr = make_trainer(tmp_path, max_bad_steps=3)
    inner = tr.objective

    def objective(model, x1, g):
        loss, m = inner(model, x1, g)
        return (loss * float("nan") if tr.step in (2, 5, 6, 7) else loss), m

    tr.objective = objective
    with pytest.raises(TsdfmError, match="3 consecutive non-finite"):
        tr.fit()
    assert tr.bad_steps == 4


def test_corrupt_latest_checkpoint_falls_back(tmp_path, capsys):
    tr = make_trainer(tmp_path)
    tr.fit()
    latest = tmp_path / "checkpoints" / "step_0000020.pt"
    raw = bytearray(latest.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    latest.write_bytes(bytes(raw))
    state, step = CheckpointManager(tmp_path / "checkpoints").load_latest()
    assert step == 10
    assert "step_0000020.pt is corrupt" in capsys.readouterr().out


def test_batch_stream_is_a_function_of_step():
    d = data(10)
    a, b = BatchStream(d, 4, 0), BatchStream(d, 4, 0)
    for s in [5, 0, 3, 7]:
        assert torch.equal(a.batch(s), b.batch(s))
    seen = torch.cat([a.batch(s) for s in range(5)])  # 20 rows = 2 epochs: each row twice
    assert len(seen) == 20


def test_ship_auto_keeps_the_weights_that_validate_better(tmp_path):
    """A slow EMA lags a short run: ``ship: auto`` ships the raw weights then, by validation."""
    tr = make_trainer(tmp_path / "a", steps=60, lr=1e-2, ema_decay=0.999)
    res = tr.fit()
    assert res.val_losses["raw"] < res.val_losses["ema"]
    assert res.shipped == "raw" and res.model is tr.model
    assert res.final_val_loss == res.val_losses["raw"]
    forced = make_trainer(tmp_path / "b", steps=60, lr=1e-2, ema_decay=0.999, ship="ema").fit()
    assert forced.shipped == "ema" and forced.val_losses is None


def test_a_run_dir_is_trained_by_one_process_at_a_time(tmp_path):
    """A live lock refuses a second trainer before any step; a dead owner's lock is taken over."""
    import json
    import socket
    import subprocess
    import sys

    from tsdfm.artifacts import run_lock

    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(TsdfmError, match="being trained by another process"):
            make_trainer(out, steps=2).fit()
        assert not (out / "log.csv").exists()
    assert not (out / ".lock").exists()  # released
    child = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead = int(subprocess.run(child, capture_output=True, check=True).stdout)  # exited already
    (out / ".lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    make_trainer(out, steps=2).fit()  # stale lock: taken over, then released
    assert (out / "log.csv").exists() and not (out / ".lock").exists()
