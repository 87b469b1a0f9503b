"""Training cost of a correlated student: seconds per distillation step, chain vs product.

A chain student (``student.kind=chain``, docs/mixture.md) runs the body once per row, then the
head under all ``K`` codes (``[B, L, K, V]`` logits) and the forward algorithm over the codes
(``O(L K^2)``) for the composed step's draw and, with the data term, for the data's. So its
extra cost per step grows with ``K``:

    head at K codes + 2 x forward algorithm (+ their backward)     (targets unchanged)

This times whole distillation steps (objective + backward + AdamW step) of the markov shapes
(``--config``, default ``configs/markov.yaml``: L = 64, V = 64, dim 128, 4 layers, batch 32, the
exact target, the data term), randomly initialised, for the product student and a chain student at each ``K``:
warm-up, then ``--repeats`` rounds of ``--steps`` steps per arm, interleaved (each step reseeded,
so every arm draws the same dt, t and x_t), reporting the median seconds per step and the median
over rounds of its ratio to the product student's. One thread. Random weights: the cost does not
depend on what a model has learned.

It also times the forward algorithm alone (forward and backward, ``[B, L, K]`` code likelihoods)
as the library runs it (the positions split once) against the position-indexed loop it replaced,
whose backward zero-fills a gradient of the whole ``[B, L, K, K]`` table at every position; the
two give bit-identical values and gradients (checked here).

On text (``--data DIR``, a prepared corpus, with its config: e.g. ``configs/bench.yaml`` and
``runs/bench/data``, V = 4,098 classes, L = 128) the rows are the training split's first
``--batch`` blocks and the shapes those of the config's teacher; the head under every code is
then ``B L K V`` logits, ``K V / V = K`` times the product student's, and the table adds their
size in float32 (computed, not measured).

Usage: python benchmarks/chain_cost.py [--codes 16 32 64] [--steps 3] [--repeats 5]
       python benchmarks/chain_cost.py --config configs/bench.yaml --data runs/bench/data \
           --batch 16 --codes 4 8 16 --steps 1
Writes benchmarks/results/chain_cost.json and chain_cost.md (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from copy import deepcopy
from pathlib import Path

import torch

from tsdfm.config import load_config
from tsdfm.data.markov import MarkovChain
from tsdfm.models import Denoiser, DenoiserConfig, build_student, count_parameters
from tsdfm.training.mixture import MixtureObjective, chain_log_likelihood
from tsdfm.training.objectives import ShortcutObjective

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "markov.yaml"


class Arm:
    """One student kind's model, optimiser and objective, timed in rounds."""

    def __init__(self, name: str, codes: int, teacher: Denoiser, x1, args):
        self.row = {"arm": name, "codes": codes}
        scfg = dataclasses.replace(
            load_config(args.config).student,
            kind="chain" if codes else "product",
            latent_codes=max(codes, 2),
            data_weight=args.data_weight,
        )
        self.student = build_student(teacher, latent_codes=codes, latent_chain=codes > 0).train()
        ids = (teacher.config.mask_id, teacher.config.num_classes)
        if codes:
            self.obj = MixtureObjective(teacher, scfg, *ids, None, latent_codes=codes,
                                        joint_weight=1.0, data_weight=args.data_weight)  # fmt: skip
        else:
            self.obj = ShortcutObjective(teacher, scfg, *ids, None)
        self.obj.target_model = deepcopy(self.student).eval()
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-4)
        self.gen, self.x1, self.times = torch.Generator(), x1, []

    def step(self, i: int) -> None:
        loss, _ = self.obj(self.student, self.x1, self.gen.manual_seed(i))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def timed(self, steps: int) -> None:
        t0 = time.perf_counter()
        for i in range(steps):
            self.step(i)
        self.times.append((time.perf_counter() - t0) / steps)


def indexed_recursion(ll, log_trans):
    """The forward algorithm as it was before the library split the positions once."""
    log_pi = [log_trans[:, 0, 0]]
    alpha = log_pi[0] + ll[:, 0]
    for i in range(1, ll.shape[1]):
        step = log_trans[:, i]
        log_pi.append(torch.logsumexp(log_pi[-1].unsqueeze(-1) + step, dim=1))
        alpha = torch.logsumexp(alpha.unsqueeze(-1) + step, dim=1) + ll[:, i]
    return torch.logsumexp(alpha, dim=-1), torch.stack(log_pi, dim=1)


def recursion_rows(args, seq_len: int) -> list[dict]:
    """Median seconds of one forward + backward of each recursion, per K (interleaved)."""
    rows = []
    for k in args.codes:
        gen = torch.Generator().manual_seed(k)
        ll = torch.randn(args.batch, seq_len, k, generator=gen).requires_grad_()
        logits = torch.randn(args.batch, seq_len, k, k, generator=gen)
        log_trans = torch.log_softmax(logits, -1).requires_grad_()
        grads, times = {}, {"indexed": [], "split": []}
        for r in range(args.repeats + 1):
            for name, fn in (("indexed", indexed_recursion), ("split", chain_log_likelihood)):
                t0 = time.perf_counter()
                joint, log_pi = fn(ll, log_trans)
                grads[name] = torch.autograd.grad(joint.sum() + log_pi.sum(), (ll, log_trans))
                if r:  # the first round warms up
                    times[name].append(time.perf_counter() - t0)
        same = all(torch.equal(a, b) for a, b in zip(grads["indexed"], grads["split"], strict=True))
        rows.append(
            {
                "codes": k,
                "indexed_sec": statistics.median(times["indexed"]),
                "split_sec": statistics.median(times["split"]),
                "bit_identical_gradients": same,
            }
        )
    return rows


def rows_and_vocab(args, cfg) -> tuple[torch.Tensor, int, int]:
    """``(x1 [batch, L], classes, seq_len)``: a markov draw from the config's chain, or the
    first blocks of a prepared corpus's training split (``--data``)."""
    if args.data is None:
        if cfg.data.corpus != "markov":
            raise SystemExit(f"error: {args.config} is a text config: pass --data DIR (prepared)")
        d = cfg.data.markov
        chain = MarkovChain(d.vocab_size, d.order, d.alpha, d.eps, d.seed)
        x1 = torch.from_numpy(chain.sample(args.batch, cfg.data.seq_len, seed=1))
        return x1, d.vocab_size, cfg.data.seq_len
    from tsdfm.data import load_prepared

    data = load_prepared(Path(args.data))
    x1 = torch.from_numpy(data.split("train")[: args.batch].copy())
    return x1, data.tokenizer.num_classes, data.seq_len


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config)
    m = cfg.teacher.model
    x1, classes, seq_len = rows_and_vocab(args, cfg)
    teacher = Denoiser(
        DenoiserConfig(classes + 1, classes, seq_len, dim=m.dim,
                       n_layers=m.n_layers, n_heads=m.n_heads, mlp_ratio=m.mlp_ratio)
    ).eval()  # fmt: skip
    for p in teacher.parameters():
        p.requires_grad_(False)
    arms = [Arm("product", 0, teacher, x1, args)]
    arms += [Arm(f"chain K={k}", k, teacher, x1, args) for k in args.codes]
    for arm in arms:
        for i in range(args.warmup):
            arm.step(1000 + i)
    # round-robin: a slow spell on a shared machine hits every arm, and ratios are per round
    for r in range(args.repeats):
        for arm in arms:
            arm.timed(args.steps)
        print(f"round {r + 1}/{args.repeats} done", flush=True)
    base = arms[0].times
    rows = [
        {
            **arm.row,
            "sec_per_step": statistics.median(arm.times),
            "ratio_to_product": statistics.median(
                a / b for a, b in zip(arm.times, base, strict=True)
            ),
            "sec_per_step_runs": arm.times,
            "head_logits_gb": args.batch * seq_len * max(arm.row["codes"], 1) * classes * 4 / 1e9,
        }
        for arm in arms
    ]
    return {
        "device": "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "vocab": classes,
        "seq_len": seq_len,
        "data": args.data,
        "batch": args.batch,
        "data_weight": args.data_weight,
        "target": f"{cfg.student.target}/{cfg.student.target_space}, teacher_steps "
        f"{cfg.student.teacher_steps}, {cfg.student.dt_weights} dt weights",
        "teacher_parameters": count_parameters(teacher),
        "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "rows": rows,
        "recursion": recursion_rows(args, seq_len),
    }


def markdown(r: dict) -> str:
    lines = [
        "# Training cost of the chain student\n",
        f"CPU, {r['threads']} thread(s), torch {r['torch']}; batch {r['batch']} x L={r['seq_len']}, "
        f"vocab {r['vocab']}, target {r['target']}, data term weight {r['data_weight']}; teacher "
        f"{r['teacher_parameters']:,} parameters. Median of {r['repeats']} runs of "
        f"{r['steps_per_repeat']} steps after {r['warmup']} warm-up steps, arms interleaved; ratio = "
        "median over rounds of (arm / product in the same round); random weights.\n",
        "| arm | ms / step | ratio to product | head logits at every position, GB (float32, computed) |",
        "|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['arm']} | {row['sec_per_step'] * 1000:.0f} | {row['ratio_to_product']:.2f} "
            f"| {row['head_logits_gb']:.2f} |"
        )
    lines += [
        "",
        f"The forward algorithm alone (forward + backward, batch {r['batch']} x L={r['seq_len']}, "
        "median of the same number of runs): position-indexed loop vs positions split once.",
        "",
        "| K | indexed, ms | split, ms | speed-up | bit-identical gradients |",
        "|---|---|---|---|---|",
    ]
    for row in r["recursion"]:
        lines.append(
            f"| {row['codes']} | {row['indexed_sec'] * 1000:.0f} | {row['split_sec'] * 1000:.0f} | "
            f"{row['indexed_sec'] / row['split_sec']:.1f}x | {row['bit_identical_gradients']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(CONFIG), help="config: shapes and recipe")
    ap.add_argument(
        "--data", help="prepared corpus (tsdfm data prepare) whose rows and vocabulary to use"
    )
    ap.add_argument("--codes", type=int, nargs="+", default=[16, 32, 64], help="chain K values")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--data-weight", type=float, default=1.0, help="student.data_weight")
    ap.add_argument("--steps", type=int, default=3, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be >= 5 for a meaningful median")
    if any(k < 2 for k in args.codes):
        ap.error("--codes: a chain needs K >= 2")
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chain_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "chain_cost.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
