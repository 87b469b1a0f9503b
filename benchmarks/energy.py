"""Energy-compass throughput: sequences scored per second, and the cost next to the teacher.

Trajectory shaping scores K candidates at every midpoint of every distillation step, so the
compass energy ``E(x) = -(1/L) sum_i log p(x_i | x_<i)`` is called thousands of times; it is
only "lightweight" if one energy call costs a small fraction of the teacher forward pass that
produced the candidates. This measures both on the same random batch, same device and threads:
warm-up runs, then the median wall-clock of ``--runs`` timed runs.

    ratio = t(teacher forward) / t(compass energy)   (> 1: the compass is cheaper)

Randomly initialised weights: speed does not depend on what a model has learned.

Usage: python benchmarks/energy.py [--config configs/tiny.yaml] [--batch 64] [--threads 1]
Writes benchmarks/results/energy.json and energy.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from tsdfm.config import ExperimentConfig, load_config
from tsdfm.models import CausalConfig, CausalLM, Denoiser, DenoiserConfig, count_parameters


def median_seconds(fn, runs: int, warmup: int, device: str) -> float:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def vocab_of(cfg: ExperimentConfig | None, default: int) -> int:
    """Total ids (specials included): BPE size + [EOS] [PAD] [MASK], markov V + [MASK]."""
    if cfg is None:
        return default
    if cfg.data.is_markov:
        return cfg.data.markov.vocab_size + 1
    return cfg.data.vocab_size + 3


def build(cfg: ExperimentConfig, vocab: int, seq_len: int) -> tuple[CausalLM, Denoiser]:
    c, t = cfg.compass.model, cfg.teacher.model
    compass = CausalLM(
        CausalConfig(vocab, vocab - 1, seq_len, c.dim, c.n_layers, c.n_heads, c.mlp_ratio)
    )
    time_cond = t.time_cond if t.time_cond is not None else cfg.flow.source == "uniform"
    teacher = Denoiser(
        DenoiserConfig(
            vocab_size=vocab,
            num_classes=vocab - 1,
            max_len=seq_len,
            dim=t.dim,
            n_layers=t.n_layers,
            n_heads=t.n_heads,
            mlp_ratio=t.mlp_ratio,
            time_cond=time_cond,
            source=cfg.flow.source,
        )
    )
    return compass.eval(), teacher.eval()


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config) if args.config else None
    vocab = vocab_of(cfg, args.vocab)
    compass, teacher = build(cfg or ExperimentConfig(), vocab, args.seq_len)
    compass, teacher = compass.to(args.device), teacher.to(args.device)
    ids = torch.randint(0, vocab - 1, (args.batch, args.seq_len), device=args.device)
    t = torch.rand(args.batch, device=args.device)

    def energy():
        return compass.energy(ids)

    @torch.no_grad()
    def teacher_forward():
        return teacher(ids, t)

    t_energy = median_seconds(energy, args.runs, args.warmup, args.device)
    t_teacher = median_seconds(teacher_forward, args.runs, args.warmup, args.device)
    return {
        "config": args.config or "defaults",
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "vocab_size": vocab,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "runs": args.runs,
        "warmup": args.warmup,
        "compass_parameters": count_parameters(compass),
        "teacher_parameters": count_parameters(teacher),
        "compass_energy_seconds": t_energy,
        "teacher_forward_seconds": t_teacher,
        "compass_sequences_per_second": args.batch / t_energy,
        "teacher_sequences_per_second": args.batch / t_teacher,
        "teacher_over_compass_time": t_teacher / t_energy,
    }


def markdown(r: dict) -> str:
    return (
        "# Energy compass throughput\n\n"
        f"Config {r['config']}, device {r['device']}, {r['threads']} thread(s), torch {r['torch']}; "
        f"batch {r['batch']} x L={r['seq_len']}, vocab {r['vocab_size']}; median of {r['runs']} "
        f"runs after {r['warmup']} warm-up.\n\n"
        "| model | parameters | seconds / batch | sequences / s |\n|---|---|---|---|\n"
        f"| compass energy | {r['compass_parameters']:,} | {r['compass_energy_seconds']:.4f} | "
        f"{r['compass_sequences_per_second']:,.0f} |\n"
        f"| teacher forward | {r['teacher_parameters']:,} | {r['teacher_forward_seconds']:.4f} | "
        f"{r['teacher_sequences_per_second']:,.0f} |\n\n"
        f"One energy call costs 1/{r['teacher_over_compass_time']:.1f} of a teacher forward pass.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="use this config's compass/teacher shapes and vocabulary")
    ap.add_argument("--vocab", type=int, default=4099, help="total ids without --config")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.runs < 5:
        ap.error("--runs must be >= 5 for a meaningful median")
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "energy" if args.device == "cpu" else f"energy_{args.device.split(':')[0]}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
