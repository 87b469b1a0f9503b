"""What a mask-source denoiser outputs at *visible* positions, where it is never trained.

The sampler never reads those outputs (a committed position never changes), but RK4 shortcut
targets do: ``m2 = jump(x_t, k2)`` with ``k2 = f(m1)`` draws tokens at positions ``m1`` already
committed from exactly these outputs (see ``student.carry_over`` in
``tsdfm.shaping.shortcut``). This measures them against the masked positions of the same
inputs: mean entropy and mean probability of the true token (for a visible position, its own
token). Usage::

    python studies/visible_outputs.py --data runs/markov/data \\
        --model teacher=runs/markov-raw/teacher --model blind=runs/markov-raw/student-blind-s0 \\
        --out docs/results/markov-carry-over/visible_outputs.md

Inputs: the first ``--num`` validation blocks, each position masked independently with
probability ``--mask-frac`` (seeded), ``t = --t`` (and ``dt = 1/64`` for a student).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from tsdfm.artifacts import publish_text
from tsdfm.data import load_prepared
from tsdfm.errors import TsdfmError
from tsdfm.generator import load_named_mask_denoiser


@torch.no_grad()
def visible_vs_masked(model, x1: torch.Tensor, mask_frac: float, t: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    masked = torch.rand(x1.shape, generator=g) < mask_frac
    x_t = torch.where(masked, model.config.mask_id, x1)
    tt = torch.full((x1.shape[0],), t)
    logits = model(x_t, tt, torch.full_like(tt, 1 / 64)) if model.config.dt_cond else model(x_t, tt)
    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    p_true = logp.gather(-1, x1.unsqueeze(-1)).squeeze(-1).exp()
    out = {}
    for name, where in (("visible", ~masked), ("masked", masked)):
        out[name] = {"entropy": float(ent[where].mean()), "p_true": float(p_true[where].mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared data dir (its validation split)")
    ap.add_argument("--model", action="append", required=True, help="NAME=run or model dir")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--mask-frac", type=float, default=0.5)
    ap.add_argument("--t", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="markdown file to write")
    args = ap.parse_args(argv)
    try:
        blocks = load_prepared(args.data).split("valid")
        x1 = torch.from_numpy(np.asarray(blocks[: args.num], dtype=np.int64))
        rows = [
            "| model | visible: entropy | visible: p(own token) | masked: entropy | masked: "
            "p(true token) |",
            "|---|---|---|---|---|",
        ]
        for spec in args.model:
            name, _, model = load_named_mask_denoiser(
                spec, "visible positions are a mask-source notion"
            )
            r = visible_vs_masked(model, x1, args.mask_frac, args.t, args.seed)
            v, m = r["visible"], r["masked"]
            rows.append(
                f"| {name} | {v['entropy']:.3f} | {v['p_true']:.3f} | {m['entropy']:.3f} | "
                f"{m['p_true']:.3f} |"
            )
    except TsdfmError as e:
        print(f"error: {e}")
        return 2
    head = (
        f"Denoiser outputs at visible vs masked positions: {x1.shape[0]} validation blocks, "
        f"each position masked with probability {args.mask_frac} (seed {args.seed}), t = "
        f"{args.t} (`studies/visible_outputs.py`). Entropy in nats.\n\n"
    )
    publish_text(args.out, head + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
