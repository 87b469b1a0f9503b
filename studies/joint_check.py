"""The joint law of one few-step step on markov: do positions committed together fit together?

A product step commits the positions of one step independently given ``x_t``; the law it is
distilled from, the teacher's composed fine steps, is correlated (docs/mixture.md). The
per-position checks (``oracle_gap.py``) cannot see that. This one looks at the pairs of
*adjacent* positions that were both masked at ``x_t`` and are both committed by the step, and
scores each pair ``(a, b)`` under the true chain:

    PMI(a, b) = log T(a, b) - log pi(b)

(``T`` the transition matrix, ``pi`` the stationary law: how much more likely ``b`` follows
``a`` than chance). The composed target's mean PMI is what a step should reach; a product step
draws ``b`` without seeing ``a``, so its PMI sits near ``-KL(pi || T(a, .))``-like values, far
below. ``off-chain`` counts pairs with ``T(a, b) < 10 eps / V`` (a transition the chain all but
never makes; each costs about ``log(V / eps)`` nats of truth-NLL).

Rows: the composed target (``--fine`` exact fine jumps across the step), the exact denoiser in
one product step (the product ceiling), and each ``--model`` in one step with its own
``dt``. Start states ``x_t``: fresh chain sequences masked at rate ``1 - kappa(t)`` (mask source,
linear scheduler: the exact marginal of the path), the same for every row. Usage::

    python studies/joint_check.py --data runs/markov/data --model product=runs/x/student \\
        --model chain=runs/x/student-chain --t 0 0.5 --dt 0.125 --out docs/results/x

Writes ``joint_check.json`` and ``joint_check.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from tsdfm.artifacts import atomic_write_json, now_iso
from tsdfm.data import load_prepared
from tsdfm.errors import TsdfmError
from tsdfm.flow import make_scheduler, sample
from tsdfm.generator import resolve_model_dir
from tsdfm.models import Denoiser, load_pretrained
from tsdfm.models.oracle import MarkovOracleDenoiser


def pair_scores(
    x_t: torch.Tensor,
    y: torch.Tensor,
    log_t: torch.Tensor,
    log_pi: torch.Tensor,
    mask_id: int,
    floor: float,
) -> dict:
    """Mean PMI (± standard error) and off-chain rate over adjacent pairs masked in ``x_t`` and
    both committed in ``y``."""
    a, b = y[:, :-1], y[:, 1:]
    both = (x_t[:, :-1] == mask_id) & (x_t[:, 1:] == mask_id) & (a != mask_id) & (b != mask_id)
    a, b = a[both], b[both]
    n = int(a.numel())
    if n == 0:
        return {"pairs": 0, "pmi": float("nan"), "se": float("nan"), "off_chain": float("nan")}
    lt = log_t[a, b]
    pmi = (lt - log_pi[b]).double()
    return {
        "pairs": n,
        "pmi": float(pmi.mean()),
        "se": float(pmi.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "off_chain": float((lt < math.log(floor)).double().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared markov data dir (order 1)")
    ap.add_argument("--model", action="append", default=[], help="NAME=run or model dir")
    ap.add_argument("--t", type=float, nargs="+", default=[0.0, 0.5], help="step start times")
    ap.add_argument("--dt", type=float, default=0.125, help="the step size (1/8: 8 steps)")
    ap.add_argument("--fine", type=int, default=16, help="exact fine jumps in the composed row")
    ap.add_argument("--num", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        data = load_prepared(Path(args.data))
        chain = data.chain()
        if chain is None or chain.order != 1:
            raise TsdfmError(f"{args.data}: joint_check needs a markov corpus of order 1")
        if not all(0 <= t and t + args.dt <= 1 + 1e-9 for t in args.t):
            raise TsdfmError(f"every --t plus --dt {args.dt} must lie in [0, 1]")
        models = {}
        for spec in args.model:
            name, sep, path = spec.partition("=")
            if not sep:
                raise TsdfmError(f"--model takes NAME=DIR, got {spec!r}")
            model, _ = load_pretrained(resolve_model_dir(path), expect=Denoiser)
            if model.config.source != "mask":
                raise TsdfmError(f"{path}: joint_check covers mask-source models only")
            models[name] = model.eval()
    except TsdfmError as e:
        print(f"error: {e}")
        return 2
    v, length = chain.vocab_size, data.seq_len
    mask_id = v  # markov ids are the chain's symbols; [MASK] is the last id
    log_t = torch.from_numpy(chain.transition).double().log()
    log_pi = torch.from_numpy(chain.stationary).double().log()
    floor = 10 * chain.eps / v
    oracle = MarkovOracleDenoiser(chain, length)
    lin = make_scheduler("polynomial", 1.0)
    x1 = torch.from_numpy(chain.sample(args.num, length, seed=args.seed + 1)).long()
    table: dict[str, dict] = {}
    for t in args.t:
        g = torch.Generator().manual_seed(args.seed)
        keep = torch.rand(x1.shape, generator=g) < t  # kappa(t) = t
        x_t = torch.where(keep, x1, torch.full_like(x1, mask_id))
        h = args.dt
        fine = torch.linspace(t, t + h, args.fine + 1).tolist()
        rows = {
            f"composed target ({args.fine} exact jumps)": (oracle, fine),
            "exact denoiser, one product step": (oracle, [t, t + h]),
            **{name: (m, [t, t + h]) for name, m in models.items()},
        }
        for name, (fn, grid) in rows.items():
            gen = torch.Generator().manual_seed(args.seed + 7)
            with torch.no_grad():
                y = sample(fn, x_t, len(grid) - 1, lin, "mask", mask_id, gen, time_grid=grid).ids
            score = pair_scores(x_t, y, log_t, log_pi, mask_id, floor)
            table.setdefault(name, {})[f"{t:g}"] = score
            print(
                f"t={t:g} {name}: PMI {score['pmi']:.3f} ± {score['se']:.3f} "
                f"off-chain {score['off_chain']:.4f} ({score['pairs']} pairs)"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "joint_check.json", {
        "created": now_iso(), "data": args.data, "t": args.t, "dt": args.dt, "fine": args.fine,
        "num": args.num, "seed": args.seed,
        "models": {n: s.split("=", 1)[1] for n, s in zip(models, args.model, strict=True)},
        "rows": table,
    })  # fmt: skip
    head = " | ".join(f"t = {t:g}: PMI | off-chain" for t in args.t)
    lines = [
        f"Adjacent pairs committed together by one step of size {args.dt:g} from `x_t` (fresh "
        f"chain sequences masked at rate 1 - t, {args.num} rows, seed {args.seed}; "
        "`studies/joint_check.py`): mean truth PMI `log T(a, b) - log pi(b)` ± standard error, "
        f"and the rate of off-chain pairs (`T(a, b) < {floor:.2g}`).",
        "",
        f"| row | {head} |",
        "|---" * (1 + 2 * len(args.t)) + "|",
    ]
    for name, by_t in table.items():
        cells = []
        for t in args.t:
            s = by_t[f"{t:g}"]
            cells += [f"{s['pmi']:.3f} ± {s['se']:.3f}", f"{s['off_chain']:.4f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "joint_check.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'joint_check.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
