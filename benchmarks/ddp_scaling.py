"""Data-parallel training on the CPU: does 2 processes x 1 shard equal 1 process x 2 shards,
does a 2-process run resume exactly, and what throughput do 1 and 2 processes reach?

A tiny mask-source teacher on a synthetic order-1 Markov corpus (no download) is trained with
the same global batch in these ways:

* ``1p``: one process, one shard (the original single-process stream);
* ``1p-accum2``: one process, two micro-batches (shards 0 and 1);
* ``2p``: ``torchrun --standalone --nproc_per_node=2``, one shard per rank (shards 0 and 1);
* ``2p-resumed``: as ``2p`` but killed by an exception at 3/4 of the run (after the checkpoint
  at 1/2) and resumed by a fresh torchrun;
* ``1p-Nthreads`` (``--all-cores``): ``1p`` with every core, the single-process baseline that
  uses as many cores as ``2p``.

``2p`` must match ``1p-accum2`` to float rounding (same rows, same noise; only the order of the
gradient sum differs) and ``2p-resumed`` must equal ``2p`` exactly. ``1p`` sees the same rows but
draws the noise of its second half-batch from another stream, so it matches only statistically.
Throughput is training tokens per second of compute (forward, backward, all-reduce, AdamW; not
evaluation or checkpoints), each process at ``--threads-per-proc`` threads, so ``1p`` uses half
the cores that ``2p`` uses unless ``--threads-1p`` or ``--all-cores`` say otherwise. On a 2-core
machine expect little gain: the point is correctness.

Usage: python benchmarks/ddp_scaling.py [--steps 24] [--dim 128] [--seq-len 128] [--batch 32]
       [--all-cores]
Writes benchmarks/results/ddp_scaling.json and ddp_scaling.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


class Crash(Exception):
    pass


def build(args, out: Path, accum: int, crash_at: int | None = None):
    from tsdfm.config import TrainConfig
    from tsdfm.data.markov import MarkovChain
    from tsdfm.models import Denoiser, DenoiserConfig
    from tsdfm.training.loop import Trainer
    from tsdfm.training.objectives import DenoisingObjective

    v = args.vocab
    chain = MarkovChain(v, 1, 0.1, 0.01, seed=0)
    train, valid = chain.sample(2048, args.seq_len, seed=1), chain.sample(128, args.seq_len, seed=2)
    torch.manual_seed(0)
    model = Denoiser(
        DenoiserConfig(v + 1, v, args.seq_len, dim=args.dim, n_layers=args.layers, n_heads=4)
    )
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=3e-3,
        warmup_steps=10,
        ema_decay=0.99,
        eval_every=args.steps,
        eval_batches=2,
        ckpt_every=args.steps // 2,
        log_every=1,
        device="cpu",
        grad_accum_steps=accum,
    )
    objective = DenoisingObjective("mask", "polynomial", 1.0, v, v)
    tr = Trainer(model, objective, train, valid, cfg, out, "teacher", progress=False)
    if crash_at is not None:
        inner = tr.objective

        def crashing(model, x1, g):
            if tr.step == crash_at:
                raise Crash
            return inner(model, x1, g)

        tr.objective = crashing
    return tr


def run(args, out: Path, accum: int, crash_at: int | None = None, resume: bool = False) -> dict:
    tr = build(args, out, accum, crash_at)
    try:
        res = tr.fit(resume=resume)
    except Crash:
        return {"crashed_at": crash_at}
    return {"tokens_per_s": res.tokens_per_second, "final_val_loss": res.final_val_loss}


def worker(argv: list[str]) -> None:
    """One rank of a torchrun job: ``worker SCENARIO OUT JSON_ARGS``."""
    from tsdfm import distributed

    scenario, out, raw = argv[0], Path(argv[1]), json.loads(argv[2])
    args = argparse.Namespace(**raw)
    torch.set_num_threads(args.threads_per_proc)
    ctx = distributed.setup("cpu")
    crash = args.steps // 2 + args.steps // 4 if scenario == "crash" else None
    result = run(args, out, accum=1, crash_at=crash, resume=scenario == "resume")
    if ctx.is_main:
        (out / f"{scenario}.json").write_text(json.dumps(result))
    distributed.shutdown()


def torchrun(args, scenario: str, out: Path) -> dict:
    raw = json.dumps({k: v for k, v in vars(args).items() if k != "out"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [__file__, "--worker", scenario, str(out), raw]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_proc)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(
            f"torchrun {scenario} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return json.loads((out / f"{scenario}.json").read_text())


def losses(out: Path) -> list[float]:
    with open(out / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def numbers(out: Path) -> list[dict]:
    with open(out / "log.csv") as f:
        return [
            {k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")}
            for r in csv.DictReader(f)
        ]


def max_weight_diff(a: Path, b: Path, step: int) -> float:
    name = f"checkpoints/step_{step:07d}.pt"
    wa = torch.load(a / name, weights_only=True)["model"]
    wb = torch.load(b / name, weights_only=True)["model"]
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads-per-proc", type=int, default=1)
    ap.add_argument("--threads-1p", type=int, default=None, help="threads of the 1-process runs")
    ap.add_argument(
        "--all-cores",
        action="store_true",
        help="also time one process on every core (on a busy machine OpenMP threads then spin "
        "and it can be several times slower than one thread)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.steps < 8:
        raise SystemExit("--steps must be >= 8 (the resume check crashes at 3/4 of the run)")
    threads_1p = args.threads_1p or args.threads_per_proc
    load_before = os.getloadavg()
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.set_num_threads(threads_1p)
        t = {}
        t["1p"] = run(args, root / "1p", accum=1)
        t["1p-accum2"] = run(args, root / "1p-accum2", accum=2)
        cores = os.cpu_count() or 1
        if args.all_cores and cores > threads_1p:  # one process on every core
            torch.set_num_threads(cores)
            t[f"1p-{cores}threads"] = run(args, root / "1p-all", accum=1)
        torch.set_num_threads(args.threads_per_proc)
        t["2p"] = torchrun(args, "full", root / "2p")
        torchrun(args, "crash", root / "2p-resumed")
        t["2p-resumed"] = torchrun(args, "resume", root / "2p-resumed")
        ref, accum2, one = losses(root / "2p"), losses(root / "1p-accum2"), losses(root / "1p")
        d_accum = np.abs(np.subtract(ref, accum2))
        d_one = np.abs(np.subtract(ref, one))
        last = args.steps
        match = {
            "2p_vs_1p_accum2": {
                "max_abs_loss_diff": float(d_accum.max()),
                "mean_abs_loss_diff": float(d_accum.mean()),
                "max_abs_weight_diff": max_weight_diff(root / "2p", root / "1p-accum2", last),
                "final_val_loss": [t["2p"]["final_val_loss"], t["1p-accum2"]["final_val_loss"]],
            },
            "2p_vs_1p_plain": {
                "max_abs_loss_diff": float(d_one.max()),
                "mean_abs_loss_diff": float(d_one.mean()),
                "mean_loss_last_quarter": [
                    float(np.mean(ref[-last // 4 :])),
                    float(np.mean(one[-last // 4 :])),
                ],
                "final_val_loss": [t["2p"]["final_val_loss"], t["1p"]["final_val_loss"]],
            },
            "2p_resumed_vs_2p": {
                "logs_identical": numbers(root / "2p-resumed") == numbers(root / "2p"),
                "max_abs_weight_diff": max_weight_diff(root / "2p", root / "2p-resumed", last),
            },
        }
    tokens = {k: round(v["tokens_per_s"], 1) for k, v in t.items()}
    result = {
        "benchmark": "ddp_scaling",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "setup": {k: v for k, v in vars(args).items() if k != "out"} | {"threads_1p": threads_1p},
        "tokens_per_s": tokens,
        "speedup_2p_over_1p": round(tokens["2p"] / tokens["1p"], 3),
        "match": match,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ddp_scaling.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "ddp_scaling.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    s, m = r["setup"], r["match"]
    a, p, res = m["2p_vs_1p_accum2"], m["2p_vs_1p_plain"], m["2p_resumed_vs_2p"]
    lines = [
        "# Data-parallel training on the CPU (gloo): correctness and throughput",
        "",
        f"Tiny mask-source teacher (dim {s['dim']}, {s['layers']} layers, L = {s['seq_len']}, "
        f"V = {s['vocab']}), global batch {s['batch']}, {s['steps']} steps; "
        f"{r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, "
        f"{s['threads_per_proc']} thread(s) per torchrun process, {s['threads_1p']} for one "
        f"process. Load average before/after: {r['machine']['load_average_before'][0]} / "
        f"{r['machine']['load_average_after'][0]} (other jobs share this machine).",
        "",
        "| run | tokens/s |",
        "|---|---:|",
        *[f"| {k} | {v:,.0f} |" for k, v in r["tokens_per_s"].items()],
        "",
        f"Speed-up of 2 processes over 1: {r['speedup_2p_over_1p']:.2f}x.",
        "",
        "| comparison | max abs loss diff | mean abs loss diff | other |",
        "|---|---:|---:|---|",
        f"| 2 processes vs 1 process x 2 micro-batches (same rows, same noise) | "
        f"{a['max_abs_loss_diff']:.2e} | {a['mean_abs_loss_diff']:.2e} | max weight diff "
        f"{a['max_abs_weight_diff']:.2e}; val loss {a['final_val_loss'][0]:.4f} vs "
        f"{a['final_val_loss'][1]:.4f} |",
        f"| 2 processes vs 1 process x 1 batch (same rows, other noise for half) | "
        f"{p['max_abs_loss_diff']:.2e} | {p['mean_abs_loss_diff']:.2e} | mean loss of the last "
        f"quarter {p['mean_loss_last_quarter'][0]:.4f} vs {p['mean_loss_last_quarter'][1]:.4f}; "
        f"val loss {p['final_val_loss'][0]:.4f} vs {p['final_val_loss'][1]:.4f} |",
        f"| 2 processes resumed after a crash vs uninterrupted | - | - | logs identical: "
        f"{res['logs_identical']}; max weight diff {res['max_abs_weight_diff']:.2e} |",
        "",
        "Command: `python benchmarks/ddp_scaling.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in s.items()
            if k in ("steps", "dim", "seq_len", "batch", "threads_per_proc")
        )
        + "`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
