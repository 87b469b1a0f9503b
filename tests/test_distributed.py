"""Two processes under torchrun (gloo, CPU) train what one process trains, and resume exactly.

The global batch of a step is cut into ``S = world_size x grad_accum_steps`` shards, each with
its own noise generator (tsdfm.training.loop). Two processes with one micro-batch each and one
process with two micro-batches therefore see the same rows with the same noise, and compute the
same gradient up to summation order: DDP sums g0/2 + g1/2 over the ranks, the accumulating
process adds g0/2 and then g1/2. With two shards that is even bit-identical (halving is exact
and a two-term sum commutes); measured here: loss and weight differences of exactly 0 for the
teacher, the causal LM and the shaped student. The tolerance (LOSS_TOL = 1e-4 on every logged
loss, WEIGHT_TOL = 1e-4 on every weight) is kept for world sizes or backends whose reduction
order differs (float rounding, ~1e-7 per step); it is still far below what a wrong shard, a
missing all-reduce or a doubled gradient gives (the one-process run with ONE shard, which only
changes the noise of half the batch, already differs by 7e-2).

This file is also the torchrun worker: ``python -m torch.distributed.run --standalone ...
tests/test_distributed.py <scenario> <dir>``. ``--standalone`` picks a free port at runtime.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tsdfm.config import ShapingConfig, StudentConfig, TrainConfig
from tsdfm.errors import TsdfmError
from tsdfm.models import CausalConfig, CausalLM, Denoiser, DenoiserConfig, build_student
from tsdfm.training.loop import Trainer
from tsdfm.training.objectives import DenoisingObjective, NextTokenObjective, ShortcutObjective

V, L = 8, 12
STEPS, CKPT = 12, 6
CRASH_AT = 9  # between the checkpoints at 6 and 12
LOSS_TOL = 1e-4
WEIGHT_TOL = 1e-4


def launches_torchrun(test):
    """Marks ``distributed`` and ``slow``: these tests share one fixture of ~20 s (two torchrun
    launches on a busy 2-core machine), so `make test-fast` skips them; CI (`make test`) runs
    them."""
    return pytest.mark.slow(pytest.mark.distributed(test))


class Crash(Exception):
    pass


def data(n=64, seed=0):
    """Sequences with strong structure: x[i+1] = (x[i] + 1) % V (as in test_training)."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, V, size=(n, 1))
    return (start + np.arange(L)[None]) % V


def train_cfg(accum: int, **kw) -> TrainConfig:
    base = dict(
        steps=STEPS,
        batch_size=8,
        warmup_steps=3,
        eval_every=CKPT,
        eval_batches=2,
        ckpt_every=CKPT,
        log_every=1,
        lr=3e-3,
        ema_decay=0.8,
        device="cpu",
        grad_accum_steps=accum,
    )
    return TrainConfig(**{**base, **kw})


def teacher_trainer(out: Path, accum: int, **kw) -> Trainer:
    torch.manual_seed(0)
    model = Denoiser(
        DenoiserConfig(vocab_size=V + 1, num_classes=V, max_len=L, dim=32, n_layers=2, n_heads=2)
    )
    objective = DenoisingObjective("mask", "polynomial", 1.0, V, V)
    return Trainer(
        model,
        objective,
        data(),
        data(16, 1),
        train_cfg(accum, **kw),
        out,
        "teacher",
        progress=False,
    )


def run_teacher(out: Path, accum: int, crash_at: int | None = None, resume: bool = False):
    tr = teacher_trainer(out, accum)
    if crash_at is not None:
        inner = tr.objective

        def objective(model, x1, g):
            if tr.step == crash_at:  # every rank crashes at the same step, before any collective
                raise Crash
            return inner(model, x1, g)

        tr.objective = objective
    return tr.fit(resume=resume)


def run_causal(out: Path, accum: int):
    torch.manual_seed(0)
    model = CausalLM(CausalConfig(vocab_size=V + 1, num_classes=V, max_len=L, dim=32, n_layers=2))
    tr = Trainer(
        model,
        NextTokenObjective(),
        data(),
        data(16, 1),
        train_cfg(accum),
        out,
        "ar",
        progress=False,
    )
    return tr.fit()


def run_student(out: Path, teacher_dir: Path, accum: int):
    """A shaped student: K = 2 candidate midpoints scored by the teacher itself (self compass)."""
    from tsdfm.models import load_pretrained
    from tsdfm.shaping import shaped_jump

    teacher, _ = load_pretrained(teacher_dir, expect=Denoiser)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    scfg = StudentConfig(teacher_steps=16, shaping=ShapingConfig(candidates=2, compass="self"))
    jump_fn = shaped_jump(scfg.shaping, teacher, seq_len=L)
    torch.manual_seed(0)
    student = build_student(teacher, str(teacher_dir))
    objective = ShortcutObjective(teacher, scfg, V, V, jump_fn, stats_every=1)
    cfg = train_cfg(accum, steps=8, ckpt_every=4, eval_every=4, lr=1e-3, ema_decay=0.9)
    tr = Trainer(student, objective, data(), data(16, 1), cfg, out, "student", progress=False)
    objective.target_model = tr.ema.module
    return tr.fit()


# ----------------------------------------------------------------------------- the worker


def worker(scenario: str, root: Path) -> None:
    """Runs on every rank under torchrun; only rank 0 writes (the Trainer sees to that)."""
    from tsdfm import distributed
    from tsdfm.generation import draw_samples

    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    assert ctx.world_size == 2, ctx
    if scenario == "main":
        run_teacher(root / "ddp-teacher", accum=1)
        run_causal(root / "ddp-causal", accum=1)
        run_student(root / "ddp-student", root / "teacher-model", accum=1)
        try:
            run_teacher(root / "ddp-crash", accum=1, crash_at=CRASH_AT)
        except Crash:
            pass
        s = draw_samples(root / "teacher-model", steps=4, num=5, seed=5, batch_size=2)
        if ctx.is_main:
            torch.save(s.ids, root / "ddp-samples.pt")
    elif scenario == "resume":
        run_teacher(root / "ddp-crash", accum=1, resume=True)
    distributed.shutdown()


def torchrun(scenario: str, root: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on a free port chosen at runtime
        "--nproc_per_node=2",
        __file__,
        scenario,
        str(root),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"torchrun {scenario} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


# ----------------------------------------------------------------------------- fixtures


def losses(out: Path) -> list[tuple[int, float]]:
    with open(out / "log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def numbers(out: Path, name: str = "log.csv") -> list[dict]:
    """Every logged number except wall-clock ones."""
    with open(out / name, newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")}
            for r in csv.DictReader(f)
        ]


def weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    path = out / "checkpoints" / f"step_{step:07d}.pt"
    return torch.load(path, weights_only=False)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One-process references (2 micro-batches), then the 2-process runs and a resume."""
    from tsdfm.data.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("ddp")
    run_teacher(root / "ref-teacher", accum=2)
    # The student's teacher must have learnt something, or its targets are uniform and the
    # distillation loss is 0 whatever the student does.
    tr = teacher_trainer(root / "teacher-run", accum=1, steps=80, lr=1e-2)
    tr.fit().model.save_pretrained(root / "teacher-model", tokenizer=Tokenizer.identity(V))
    run_causal(root / "ref-causal", accum=2)
    run_student(root / "ref-student", root / "teacher-model", accum=2)
    torchrun("main", root)
    torchrun("resume", root)
    return root


def assert_close_runs(ref: Path, ddp: Path, last_step: int) -> None:
    a, b = losses(ref), losses(ddp)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, last_step + 1))
    worst = max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True))
    assert worst <= LOSS_TOL, f"largest per-step loss difference {worst:.2e}"
    wa, wb = weights(ref, last_step), weights(ddp, last_step)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=WEIGHT_TOL, rtol=0)


# ----------------------------------------------------------------------------- tests


@launches_torchrun
def test_two_process_teacher_matches_one_process(runs):
    assert_close_runs(runs / "ref-teacher", runs / "ddp-teacher", STEPS)


@launches_torchrun
def test_two_process_causal_lm_matches_one_process(runs):
    assert_close_runs(runs / "ref-causal", runs / "ddp-causal", STEPS)


@launches_torchrun
def test_two_process_shaped_student_matches_one_process(runs):
    assert_close_runs(runs / "ref-student", runs / "ddp-student", 8)
    nav = [float(r["nav_gap"]) for r in numbers(runs / "ddp-student")]
    assert all(np.isfinite(nav)) and max(nav) > 0  # the compass did choose between candidates


@launches_torchrun
def test_rank0_writes_one_checkpoint_set(runs):
    out = runs / "ddp-teacher"
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert files == ["index.json", "latest.json", "step_0000006.pt", "step_0000012.pt"]
    assert [r["step"] for r in numbers(out)] == [str(s) for s in range(1, STEPS + 1)]
    assert [r["step"] for r in numbers(out, "eval.csv")] == ["6", "12"]
    state = torch.load(out / "checkpoints/step_0000012.pt", weights_only=False)
    assert len(state["generators"]) == 2 and len(state["rank_rng"]) == 2
    assert state["world_size"] == 2 and state["noise_device"] == "cpu"
    # the two shards draw different noise
    assert not torch.equal(state["generators"][0], state["generators"][1])


@launches_torchrun
def test_resume_of_two_process_run_is_exact(runs):
    """Crash at step 9 (checkpoint at 6), resume in a fresh torchrun: the same run exactly."""
    assert numbers(runs / "ddp-crash") == numbers(runs / "ddp-teacher")
    a, b = weights(runs / "ddp-teacher", STEPS), weights(runs / "ddp-crash", STEPS)
    assert all(torch.equal(a[k], b[k]) for k in a)


@launches_torchrun
def test_resume_with_another_world_size_keeping_the_streams(runs, tmp_path):
    """The 2-process checkpoint at step 6 continued by ONE process with 2 micro-batches."""
    import shutil

    from tsdfm.training.checkpoint import CheckpointManager

    out = tmp_path / "one"
    shutil.copytree(runs / "ddp-teacher", out)
    ckpts = out / "checkpoints"
    six = torch.load(ckpts / "step_0000006.pt", weights_only=False)
    shutil.rmtree(ckpts)
    CheckpointManager(ckpts).save(six, 6)  # as if the 2-process run had stopped at step 6
    run_teacher(out, accum=2, resume=True)
    a, b = losses(runs / "ddp-teacher"), losses(out)
    assert [s for s, _ in b] == list(range(1, STEPS + 1))
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)) <= LOSS_TOL


@launches_torchrun
def test_resume_with_another_stream_count_is_a_clear_error(runs, tmp_path):
    import shutil

    out = tmp_path / "one"
    shutil.copytree(runs / "ddp-teacher", out)
    with pytest.raises(TsdfmError, match=r"2 noise stream.*grad_accum_steps=2"):
        run_teacher(out, accum=1, resume=True)


@launches_torchrun
def test_distributed_sampling_matches_one_process(runs):
    from tsdfm.generation import draw_samples

    ddp = torch.load(runs / "ddp-samples.pt")
    one = draw_samples(
        runs / "teacher-model", steps=4, num=5, seed=5, batch_size=2, seed_per_batch=True
    )
    assert ddp.shape == (5, L) and torch.equal(ddp, one.ids)
    # batch 0 keeps the plain seed: the first batch equals the classic single-stream sampler
    classic = draw_samples(runs / "teacher-model", steps=4, num=2, seed=5, batch_size=2)
    assert torch.equal(classic.ids, one.ids[:2])


# ----------------------------------------------------------------------------- one process


def test_batch_must_split_into_the_shards(tmp_path):
    with pytest.raises(TsdfmError, match="divisible by world size x grad_accum_steps"):
        teacher_trainer(tmp_path, accum=3)


def test_bf16_autocast_path_runs_on_cpu(tmp_path):
    """precision=bf16 is CUDA's default; on the CPU it can be forced to exercise the code."""
    tr = teacher_trainer(tmp_path, accum=2, precision="bf16", steps=4)
    assert tr.autocast_dtype == torch.bfloat16
    res = tr.fit()
    assert np.isfinite(res.final_val_loss) and res.bad_steps == 0


def test_single_process_commands_refuse_torchrun(tmp_path, monkeypatch, capsys):
    from tsdfm.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["data", "prepare", "--out", str(tmp_path / "d")]) == 2
    assert "runs in one process" in capsys.readouterr().err


def test_device_cuda_without_cuda_is_a_clear_error():
    from tsdfm.distributed import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TsdfmError, match="no CUDA"):
        resolve_device("cuda")


def test_gpu_smoke_script_runs_at_a_toy_shape_on_cpu(tmp_path, monkeypatch, capsys):
    """scripts/gpu_smoke.py cannot run here at its real shape; its --tiny CPU mode runs the
    same stages, so the script a GPU machine will run is at least known to work."""
    import importlib.util
    import json

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["gpu_smoke.py", "--tiny", "--device", "cpu", "--steps", "4", "--student-steps"]
    argv += ["2", "--batch", "4", "--student-batch", "2", "--num-samples", "2", "--warmup", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path)])
    threads = torch.get_num_threads()
    try:
        assert mod.main() == 0
    finally:
        torch.set_num_threads(threads)
    stages = [r["stage"] for r in json.loads((tmp_path / "gpu_smoke.json").read_text())["rows"]]
    assert stages[:5] == ["teacher", "compass", "ar", "student-blind", "student-shaped"]
    assert stages[5:] == [
        "sample student-shaped@8",
        "sample teacher@1024",
        "sample teacher@1024 (no cache)",
    ]


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
