"""Extra training cost of trajectory shaping: seconds per student step, shaped vs blind.

Shaping replaces each midpoint jump of the shortcut target (one for the default ``heun`` target,
three for ``rk4``) by K batched candidate jumps plus one compass call on ``[B*K, L]``, so its
extra cost per step is roughly

    midpoints * (K jumps + compass energy of K views)     (the EMA/teacher forwards do not change)

This times whole distillation steps (objective + backward + AdamW step) of a randomly
initialised teacher/student (default: tiny, L = 64), for the blind recipe and for each compass
with K in ``--candidates``: warm-up, then ``--repeats`` rounds of ``--steps`` steps per arm,
interleaved (each step reseeded, so every arm draws the same dt, t and x_t), reporting the
median seconds per step and the median over rounds of its ratio to blind. One thread.
Weights are random: speed does not depend on what a model has learned.

``--compass-shapes DIMxLAYERS[xHEADS] ...`` times causal compasses of several sizes in the same
rounds (issue 36's compass-strength sweep: what each size costs per training step).

Usage: python benchmarks/shaping_cost.py [--steps 3] [--repeats 5] [--threads 1]
       python benchmarks/shaping_cost.py --vocab 4096 --seq-len 128 --dim 256 --layers 4 \
           --compasses ar --candidates 4 --compass-shapes 56x2 120x2 256x4x4 --steps 1 \
           --out benchmarks/results/bench-compass-sizes      # the bench teacher's shapes
Writes shaping_cost.json and shaping_cost.md to ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from copy import deepcopy
from pathlib import Path

import torch

from tsdfm.config import ShapingConfig, StudentConfig
from tsdfm.data.markov import MarkovChain
from tsdfm.flow import make_scheduler
from tsdfm.models import (
    CausalConfig,
    CausalLM,
    Denoiser,
    DenoiserConfig,
    build_student,
    count_parameters,
)
from tsdfm.shaping import CausalCompass, Navigator, OracleCompass, SelfCompass, blind_jump
from tsdfm.training.objectives import ShortcutObjective


def parse_shape(text: str) -> tuple[int, int, int]:
    """``DIMxLAYERS`` or ``DIMxLAYERSxHEADS`` (2 heads by default) -> (dim, layers, heads)."""
    parts = text.lower().split("x")
    if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"compass shape {text!r}: expected DIMxLAYERS[xHEADS]")
    dim, layers, heads = (*map(int, parts), 2)[:3]
    if dim % heads:
        raise argparse.ArgumentTypeError(
            f"compass shape {text!r}: {heads} heads do not divide {dim}"
        )
    return dim, layers, heads


def models(args):
    """The frozen teacher and one causal LM per ``--compass-shapes`` entry."""
    torch.manual_seed(0)
    v = args.vocab
    teacher = Denoiser(
        DenoiserConfig(v + 1, v, args.seq_len, dim=args.dim, n_layers=args.layers, n_heads=4)
    ).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    lms = [
        CausalLM(CausalConfig(v + 1, v, args.seq_len, dim=d, n_layers=n, n_heads=h))
        for d, n, h in args.compass_shapes
    ]
    return teacher, lms


def compass_for(kind, teacher, lm, chain):
    return {"ar": lambda: CausalCompass(lm), "self": lambda: SelfCompass(teacher),
            "oracle": lambda: OracleCompass(chain)}[kind]()  # fmt: skip


class Arm:
    """One configuration's student, optimiser and objective, timed in rounds."""

    def __init__(self, name, compass, k, teacher, jump_fn, x1, args, scfg):
        self.row = {"arm": name, "compass": compass, "K": k}
        self.student = build_student(teacher).train()
        self.obj = ShortcutObjective(teacher, scfg, args.vocab, args.vocab, jump_fn)
        self.obj.target_model = deepcopy(self.student).eval()
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-4)
        self.gen, self.x1, self.times = torch.Generator(), x1, []

    def step(self, i: int) -> None:
        # reseed per step: every arm sees the same (dt, t, x_t) whatever K consumed before
        loss, _ = self.obj(self.student, self.x1, self.gen.manual_seed(i))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def timed(self, steps: int) -> None:
        t0 = time.perf_counter()
        for i in range(steps):
            self.step(i)
        self.times.append((time.perf_counter() - t0) / steps)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    teacher, lms = models(args)
    scfg = StudentConfig(teacher_steps=1024, shaping=ShapingConfig())
    chain = MarkovChain(args.vocab, 1, 0.2, 0.01, 0)
    x1 = torch.from_numpy(chain.sample(args.batch, args.seq_len, seed=1))
    base = blind_jump(make_scheduler("polynomial", 1.0), "mask", args.vocab)
    arms = [Arm("blind", None, None, teacher, None, x1, args, scfg)]
    several = len(lms) > 1
    for kind in args.compasses:
        # the causal compass at every size; self and oracle need no LM (one set of arms each)
        for lm, shape in (
            zip(lms, args.compass_shapes, strict=True) if kind == "ar" else [(None, None)]
        ):
            label = kind
            if shape is not None and several:
                label += f" ({'x'.join(map(str, shape))}, {count_parameters(lm) / 1e6:.2f}M)"
            for k in args.candidates:
                nav = Navigator(compass_for(kind, teacher, lm, chain), k, "argmin", 1.0, "mask",
                                args.vocab)  # fmt: skip
                jump = nav.navigated_jump(base)
                arms.append(Arm(f"{label} K={k}", kind, k, teacher, jump, x1, args, scfg))
    for arm in arms:
        for i in range(args.warmup):
            arm.step(1000 + i)
    # round-robin: a slow spell on a shared machine hits every arm, and ratios are per round
    for r in range(args.repeats):
        for arm in arms:
            arm.timed(args.steps)
        print(f"round {r + 1}/{args.repeats} done", flush=True)
    blind = arms[0].times
    rows = []
    for arm in arms:
        ratios = [a / b for a, b in zip(arm.times, blind, strict=True)]
        rows.append(
            {
                **arm.row,
                "sec_per_step": statistics.median(arm.times),
                "ratio_to_blind": statistics.median(ratios),
                "sec_per_step_runs": arm.times,
            }
        )
    return {
        "device": "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "vocab": args.vocab,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "target": f"{scfg.target} / {scfg.target_space} target, teacher_steps 1024, "
        f"{scfg.dt_weights} dt weights",
        "teacher_parameters": count_parameters(teacher),
        "compass_parameters": [count_parameters(lm) for lm in lms],
        "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "rows": rows,
    }


def markdown(r: dict) -> str:
    lines = [
        "# Training cost of trajectory shaping\n",
        f"CPU, {r['threads']} thread(s), torch {r['torch']}; batch {r['batch']} x L={r['seq_len']}, "
        f"vocab {r['vocab']}, {r['target']}; teacher {r['teacher_parameters']:,} parameters, "
        f"causal compass(es) {', '.join(f'{n:,}' for n in r['compass_parameters'])}. Median of {r['repeats']} runs of "
        f"{r['steps_per_repeat']} steps after {r['warmup']} warm-up steps, arms interleaved; ratio = "
        "median over rounds of (arm / blind in the same round); random weights.\n",
        "| arm | ms / step | ratio to blind |",
        "|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['arm']} | {row['sec_per_step'] * 1000:.1f} | {row['ratio_to_blind']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=64, help="real tokens ([MASK] is added)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument(
        "--compass-shapes",
        nargs="+",
        type=parse_shape,
        default=[(64, 1, 2)],
        metavar="DIMxLAYERS[xHEADS]",
        help="causal compasses to time (the ar arms), e.g. 56x2 120x2 256x4x4",
    )
    ap.add_argument("--compasses", nargs="+", default=["ar", "self", "oracle"])
    ap.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=3, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be >= 5 for a meaningful median")
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shaping_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "shaping_cost.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
