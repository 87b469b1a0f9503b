"""Per-step-size distance of markov teachers and students from the exact denoiser.

``KL(exact posterior || model(x_t, t, dt))`` on masked positions (every position with the
uniform source), for each step count S
(dt = 1/S, t on the sampler's grid k/S), on fresh true chain samples; see
``studylib.oracle_gap`` for why the exact posterior is the ideal at every dt. It shows
where a student's few-step error comes from: a badly fitted anchor (large gap at S = N) or a
shortcut chain that loses quality on the way up (gap growing as S shrinks), and whether the
model is too flat (flatness = H(model) - H(exact) > 0). Usage::

    python studies/oracle_gap.py --data runs/markov/data \\
        --model teacher=runs/markov-raw/teacher --model blind=runs/markov-raw/student-blind-s0 \\
        --steps 64 32 16 8 4 2 1 --out docs/results/markov-exact-anchor

Each model is compared with the exact posterior of its own path (mask, or uniform through its
scheduler). Writes ``oracle_gap.json`` and ``oracle_gap.md`` (with the forward gap split by grid
time ``k/S`` for ``--by-time S``) into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from studylib.oracle_gap import current_token_mass, oracle_gap

from tsdfm.artifacts import atomic_write_json, now_iso
from tsdfm.data import load_prepared
from tsdfm.errors import TsdfmError
from tsdfm.generator import resolve_model_dir
from tsdfm.models import Denoiser, load_pretrained
from tsdfm.training.student import exact_anchor

WAYS = ("forward", "reverse", "flatness")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared markov data dir")
    ap.add_argument("--model", action="append", required=True, help="NAME=run or model dir")
    ap.add_argument("--steps", type=int, nargs="+", default=[64, 32, 16, 8, 4, 2, 1])
    ap.add_argument("--num", type=int, default=1024, help="true chain sequences per step size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--by-time",
        type=int,
        help="S whose forward gap is split by grid time (default: 8 if "
        "given in --steps, else the smallest S)",
    )
    ap.add_argument(
        "--keep",
        type=int,
        nargs=2,
        metavar=("ANCHOR_STEPS", "CHAINS"),
        help="uniform-source models: also tabulate p(x_t) (the mass a step puts on the current "
        "token) at the --by-time grid, beside the exact posterior's and the composed law of "
        "ANCHOR_STEPS fine exact jumps per unit time (CHAINS chains): a distilled student's ideal",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    by_time = args.by_time or (8 if 8 in args.steps else min(args.steps))
    if by_time not in args.steps:
        ap.error(f"--by-time {by_time} must be one of --steps {args.steps}")
    if args.keep and (args.keep[0] % by_time or min(args.keep) < 1):
        ap.error(
            f"--keep {args.keep[0]} {args.keep[1]}: ANCHOR_STEPS must be a multiple of "
            f"--by-time {by_time} and CHAINS >= 1"
        )
    try:
        data = load_prepared(Path(args.data))
        chain = data.chain()
        if chain is None:
            raise TsdfmError(f"{args.data} is not a markov corpus (the exact denoiser needs one)")
        x1 = torch.from_numpy(chain.sample(args.num, data.seq_len, seed=args.seed + 1)).long()
        rows, keeps = {}, {}
        for spec in args.model:
            name, sep, path = spec.partition("=")
            if not sep:
                raise TsdfmError(f"--model takes NAME=DIR, got {spec!r}")
            model, _ = load_pretrained(resolve_model_dir(path), expect=Denoiser)
            model.eval()
            oracle = exact_anchor(model, data)  # the exact posterior of this model's own path
            gen = torch.Generator().manual_seed(args.seed)  # same x_t for every model
            rows[name] = {
                "dir": path,
                "source": model.config.source,
                "gap": oracle_gap(model, oracle, x1, args.steps, gen),
            }
            if args.keep and model.config.source == "uniform":
                n_anchor, chains = args.keep
                if "exact posterior" not in keeps:  # the two references, once, first
                    oracle.config = model.config
                    for ref, comp in (
                        ("exact posterior", None),
                        (f"exact composite {n_anchor}", (oracle, n_anchor // by_time, chains)),
                    ):
                        gen = torch.Generator().manual_seed(args.seed)
                        keeps[ref] = current_token_mass(oracle, x1, by_time, gen, composite=comp)
                gen = torch.Generator().manual_seed(args.seed)
                keep = {name: current_token_mass(model, x1, by_time, gen)}
                keeps.update(keep)
                print("p(x_t)", {k: [round(v, 3) for v in vals] for k, vals in keep.items()})
            for way in WAYS:
                print(name, way, {s: round(v, 4) for s, v in rows[name]["gap"][way].items()})
    except TsdfmError as e:
        print(f"error: {e}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out / "oracle_gap.json",
        {
            "created": now_iso(),
            "data": args.data,
            "num": args.num,
            "seed": args.seed,
            "steps": args.steps,
            "rows": rows,
            "current_token_mass": {"steps": by_time, "keep": args.keep, "rows": keeps},
        },
    )
    head = "| model | KL | " + " | ".join(f"S = {s}" for s in args.steps) + " |"
    lines = [
        f"Distance from the exact posterior of each model's own path, in nats per masked "
        f"position (mask source) or per position (uniform source), {args.num} fresh chain "
        f"sequences per step size, t on the grid k/S (`studies/oracle_gap.py`, seed {args.seed}); "
        "forward = KL(exact || model) (what distillation minimises), reverse = KL(model || "
        "exact), flatness = H(model) - H(exact); a token drawn from the model costs reverse + "
        "flatness more nats under the exact posterior than one drawn from it.",
        "",
        head,
        "|---" * (len(args.steps) + 2) + "|",
    ]
    for name, row in rows.items():
        for way in WAYS:
            vals = " | ".join(f"{row['gap'][way][s]:.4f}" for s in args.steps)
            lines.append(f"| {name} | {way} | {vals} |")
    S = by_time
    lines += [
        "",
        f"Forward gap by grid time t = k/{S} (the times a {S}-step sampler visits):",
        "",
        "| model | " + " | ".join(f"t = {k}/{S}" for k in range(S)) + " |",
        "|---" * (S + 1) + "|",
    ]
    for name, row in rows.items():
        vals = " | ".join(
            "–" if v is None else f"{v:.4f}" for v in row["gap"]["forward_by_time"][S]
        )
        lines.append(f"| {name} | {vals} |")
    if keeps:
        n_anchor, chains = args.keep
        lines += [
            "",
            f"Uniform source: mean p(x_t), the probability a {S}-step jump's distribution puts on "
            f"each position's current token, by grid time (the sampler keeps it with probability "
            f"(1 - q) + q p(x_t)); the exact composite row is the composed law of {n_anchor} fine "
            f"exact jumps per unit time ({chains} chains), a perfectly distilled student's step:",
            "",
            "| step | " + " | ".join(f"t = {k}/{S}" for k in range(S)) + " |",
            "|---" * (S + 1) + "|",
        ]
        for name, vals in keeps.items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    (out / "oracle_gap.md").write_text("\n".join(lines) + "\n")
    print(f"-> {out / 'oracle_gap.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
