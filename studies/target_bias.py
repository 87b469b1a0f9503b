"""Is one shortcut link unbiased when the exact denoiser drives it? (``markov``, mask source)

The probability-mixture target (``tsdfm.shaping.shortcut``) should equal the exact posterior
``p(x_1^i | x_t)`` *in expectation over its random midpoints* when the model that builds it is
exact; a student trained by forward KL learns exactly that expectation (the minimiser of
``E KL(target || s)`` is ``E[target]``). On a correlated chain this is not a formality: the
midpoints are drawn position by position, so their joint is not the true one. This script
measures it: for fresh chain samples and ``x_t`` on the S-step grid, it builds the target
``--reps`` times per ``x_t`` with the exact denoiser in place of the EMA student, averages the
probabilities and reports forward KL, reverse KL and flatness (``H(mean target) - H(exact)``)
per masked position, as ``studies/oracle_gap.py`` does for trained models. The sampling error
of a mean over R draws adds about ``KL(R = 1) / R`` to both KLs, so compare two values of R:
a bias stays, noise falls as 1/R.

    python studies/target_bias.py --data runs/markov/data --reps 32 128 \\
        --out docs/results/markov-exact-anchor

Writes ``target_bias.json`` and ``target_bias.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from studylib.oracle_gap import oracle_gap
from torch import Tensor, nn

from tsdfm.artifacts import atomic_write_json, now_iso
from tsdfm.errors import TsdfmError
from tsdfm.flow import make_scheduler
from tsdfm.models.oracle import load_markov_oracle
from tsdfm.shaping import blind_jump, shortcut_target
from tsdfm.shaping.shortcut import TARGETS

WAYS = ("forward", "reverse", "flatness")


class MeanTarget(nn.Module):
    """``forward(x_t, t, dt)``: log of the mean over ``reps`` draws of the shortcut target built
    by ``oracle`` (posing as a model for :func:`oracle_gap`)."""

    def __init__(self, oracle: nn.Module, method: str, space: str, reps: int, seed: int):
        super().__init__()
        self.oracle, self.method, self.space, self.reps = oracle, method, space, reps
        v = oracle.vocab_size
        # the path settings oracle_gap reads from a model's config; markov's linear schedule
        self.config = types.SimpleNamespace(
            scheduler="polynomial", exponent=1.0, source="mask", mask_id=v, num_classes=v
        )
        self.scheduler = make_scheduler(self.config.scheduler, self.config.exponent)
        self.jump = blind_jump(self.scheduler, "mask", v)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor, t: Tensor, dt: Tensor) -> Tensor:
        r = self.reps
        logp = shortcut_target(
            lambda a, b, c: self.oracle(a, b, c).float(),
            x.repeat_interleave(r, 0),
            t.repeat_interleave(r),
            dt.repeat_interleave(r),
            method=self.method,
            space=self.space,
            scheduler=self.scheduler,
            source="mask",
            mask_id=self.config.mask_id,
            jump_fn=self.jump,
            generator=self.generator,
        )
        mean = logp.double().exp().view(x.shape[0], r, *logp.shape[1:]).mean(1)
        return mean.clamp_min(1e-30).log()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared markov data dir (linear schedule)")
    ap.add_argument("--steps", type=int, nargs="+", default=[64, 16, 8, 4, 2])
    ap.add_argument("--reps", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--methods", nargs="+", default=["heun", "rk4"])
    ap.add_argument("--spaces", nargs="+", default=["probs", "logits"])
    ap.add_argument("--num", type=int, default=128, help="true chain sequences per step size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        if min(args.reps) < 1 or args.num < 1:
            raise TsdfmError("--reps and --num must be >= 1")
        chain, oracle, seq_len = load_markov_oracle(args.data)
        x1 = torch.from_numpy(chain.sample(args.num, seq_len, seed=args.seed + 1)).long()
        rows = []
        targets = [(m, s) for m in args.methods for s in args.spaces if (m, s) in TARGETS]
        for method, space in targets:
            for reps in args.reps:
                target = MeanTarget(oracle, method, space, reps, args.seed + 7)
                gen = torch.Generator().manual_seed(args.seed)  # same x_t for every row
                gap = oracle_gap(target, oracle, x1, args.steps, gen, batch_size=32)
                rows.append({"method": method, "space": space, "reps": reps, "gap": gap})
                print(method, space, f"R={reps}", {w: gap[w] for w in WAYS}, flush=True)
    except TsdfmError as e:
        print(f"error: {e}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "target_bias.json", {"created": now_iso(), **vars(args), "rows": rows})
    head = "| target | R | measure | " + " | ".join(f"S = {s}" for s in args.steps) + " |"
    lines = [
        "# One shortcut link built by the exact denoiser, vs the exact posterior",
        "",
        "`python studies/target_bias.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`",
        f"{args.num} chain sequences per S; mean over R target draws per x_t; nats per masked "
        "position (flatness = H(mean target) - H(exact)).",
        "",
        head,
        "|" + "---|" * (3 + len(args.steps)),
    ]
    for r in rows:
        for way in WAYS:
            vals = " | ".join(f"{r['gap'][way][s]:+.4f}" for s in args.steps)
            lines.append(f"| {r['method']}/{r['space']} | {r['reps']} | {way} | {vals} |")
    (out / "target_bias.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / 'target_bias.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
