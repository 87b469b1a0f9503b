"""Teacher training step on the CPU: float32 vs bf16 autocast (``train.precision``).

``precision=auto`` keeps float32 on the CPU: the small CPU configs' golden numbers are float32,
and on CPUs without bf16 matrix units autocast is slower. On CPUs with them (Intel AMX,
``amx_bf16`` in ``/proc/cpuinfo``) a long CPU run (the ``bench`` budget, or extending it with
``teacher.init_from``) can be worth running with ``teacher.train.precision=bf16``; this script
measures whether it is, on this machine, for a given config's teacher shape.

One step = the teacher objective (mask/uniform path, CE on the positions that can change) +
backward + AdamW, exactly as ``Trainer`` runs it. Arms interleaved, ``--repeats`` rounds of
``--steps`` steps after warm-up; ratio = median over rounds of (bf16 / fp32 in the same round).
Random weights: speed does not depend on what a model has learned. It also reports the loss of
both arms on one fixed batch, to show what bf16 changes numerically.

Usage: python benchmarks/train_precision.py [--config configs/bench.yaml] [--threads 2]
Writes benchmarks/results/train_precision.json and train_precision.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from tsdfm.config import load_config
from tsdfm.models import Denoiser, DenoiserConfig, count_parameters
from tsdfm.training.objectives import DenoisingObjective


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            return sorted(f for f in line.split(":", 1)[1].split() if "bf16" in f or "amx" in f)
    return []


def build(cfg, vocab: int):
    m = cfg.teacher.model
    mcfg = DenoiserConfig(
        vocab_size=vocab + 1,
        num_classes=vocab,
        max_len=cfg.data.seq_len,
        dim=m.dim,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        mlp_ratio=m.mlp_ratio,
        time_cond=m.time_cond if m.time_cond is not None else cfg.flow.source == "uniform",
        source=cfg.flow.source,
    )
    torch.manual_seed(0)
    model = Denoiser(mcfg)
    objective = DenoisingObjective(
        cfg.flow.source, cfg.flow.scheduler, cfg.flow.exponent, mcfg.mask_id, vocab
    )
    return model, objective


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    vocab, batch = cfg.data.vocab_size, cfg.teacher.train.batch_size
    arms = {}
    for name in ("fp32", "bf16"):
        model, objective = build(cfg, vocab)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.teacher.train.lr)
        arms[name] = (model, objective, opt, [])
    x1 = torch.randint(
        0, vocab, (batch, cfg.data.seq_len), generator=torch.Generator().manual_seed(0)
    )

    def context(name):
        return torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16" else nullcontext()

    def steps(name, n):
        model, objective, opt, _ = arms[name]
        for i in range(n):
            opt.zero_grad(set_to_none=True)
            with context(name):
                loss, _ = objective(model, x1, torch.Generator().manual_seed(i))
            loss.backward()
            opt.step()

    losses = {}
    for name, (model, objective, _, _) in arms.items():
        with torch.no_grad(), context(name):
            losses[name] = float(objective(model, x1, torch.Generator().manual_seed(123))[0])
    for name in arms:
        steps(name, args.warmup)
    ratios = []
    for _ in range(args.repeats):
        round_times = {}
        for name in arms:
            t0 = time.perf_counter()
            steps(name, args.steps)
            round_times[name] = (time.perf_counter() - t0) / args.steps
            arms[name][3].append(round_times[name])
        ratios.append(round_times["bf16"] / round_times["fp32"])
    model = arms["fp32"][0]
    return {
        "device": "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_bf16_flags": cpu_flags(),
        "config": str(args.config),
        "parameters": count_parameters(model),
        "batch": batch,
        "seq_len": cfg.data.seq_len,
        "vocab": vocab,
        "source": cfg.flow.source,
        "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "sec_per_step": {k: statistics.median(v[3]) for k, v in arms.items()},
        "sec_per_step_runs": {k: v[3] for k, v in arms.items()},
        "ratio_bf16_to_fp32": statistics.median(ratios),
        "loss_same_batch": losses,
    }


def markdown(r: dict) -> str:
    s = r["sec_per_step"]
    flags = ", ".join(r["cpu_bf16_flags"]) or "none"
    return "\n".join(
        [
            "# Teacher training step on the CPU: float32 vs bf16 autocast\n",
            f"`{r['config']}` teacher shape ({r['parameters']:,} parameters, {r['source']} source), "
            f"batch {r['batch']} x L = {r['seq_len']}, vocab {r['vocab']}; CPU, {r['threads']} "
            f"thread(s), torch {r['torch']}, CPU bf16 flags: {flags}. Median of {r['repeats']} "
            f"rounds of {r['steps_per_repeat']} steps after {r['warmup']} warm-up steps, arms "
            "interleaved; ratio = median over rounds of (bf16 / fp32 in the same round).\n",
            "| precision | ms / step | loss on one fixed batch (same init) |",
            "|---|---|---|",
            f"| fp32 | {s['fp32'] * 1000:.0f} | {r['loss_same_batch']['fp32']:.4f} |",
            f"| bf16 autocast | {s['bf16'] * 1000:.0f} | {r['loss_same_batch']['bf16']:.4f} |",
            "",
            f"bf16 / fp32 time per step: **{r['ratio_bf16_to_fp32']:.2f}** "
            f"({1 / r['ratio_bf16_to_fp32']:.2f}x the steps per second).",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/bench.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be >= 5 for a meaningful median")
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_precision.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "train_precision.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
