"""Trajectory shaping at sampling time: what a compass's tilt is worth before any distillation.

A navigated student is trained on the per-position law of shortcut chains whose midpoints a
compass picked (best of K candidate jumps). Its gain can be lost in two places: the compass's
tilt itself may buy no more than a sampling temperature does, or the tilt may be real but live
in the *joint* law of the chain, which a student committing the positions of a step
independently cannot carry (DESIGN.md section 10). This driver separates the two. It samples
the teacher with S steps and navigates every jump as the trainer navigates a midpoint
(:class:`tsdfm.shaping.Navigator`: K candidate jumps from one prediction, look-ahead views,
``argmin`` compass energy), so the navigated tilt reaches the samples whole::

    for k in 0..S-1:  logits = teacher(x, k/S);  x = navigate(jump(x, logits, k/S -> (k+1)/S))

Placed on the *blind* teacher's sampling-temperature curve at the same S (``--temperatures``)
with ``studies/equal_entropy.py``, a navigated row below the curve says the compass carries
information a temperature does not; a navigated student that then stays above its own blind
curve loses it in distillation. K = 1 is the plain sampler (the same draws as
``tsdfm.flow.sample`` without forward caching; tested). Usage::

    python studies/navigated_sampler.py --teacher runs/bench-longest/teacher --steps 16 \\
        --compass c010=runs/bench-longest/compass-c010 --candidates 4 \\
        --temperatures 1 0.95 0.9 0.85 --out docs/results/bench-compass/navigated/samples

Where the tilt lives: ``--product M`` draws M navigated jumps from the same state at every step
and keeps, per position, the token of one of them chosen independently (:func:`decorrelate`):
the same per-position law as the navigated step, without its correlations between positions,
i.e. what a *perfect* student that commits a step's positions independently would sample from
the navigated step. A gain that survives it is one a product student can learn; a gain that
vanishes lives in the joint law (DESIGN.md section 10). Blind jumps are products already.

Writes ``teacher[-T<T>]_<S>.jsonl`` for the blind rows and ``teacher-nav-<NAME>-k<K>[-prod<M>]_<S>.jsonl``
for each compass (+ ``.meta.json`` with the energy gap and how often selection overrode
candidate 0), which ``tsdfm evaluate --samples ...`` scores. Rows that exist with the same
settings are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tsdfm import __version__
from tsdfm.artifacts import now_iso
from tsdfm.distributed import make_generator
from tsdfm.errors import TsdfmError
from tsdfm.flow import filter_logits, make_scheduler, sample_source
from tsdfm.generation import SampleSet, write_samples
from tsdfm.generator import resolve_model_dir
from tsdfm.models import Denoiser, load_pretrained
from tsdfm.sample_files import meta_path
from tsdfm.shaping.compass import load_compass
from tsdfm.shaping.navigator import Navigator
from tsdfm.shaping.shortcut import blind_jump


@torch.no_grad()
def navigated_sample(
    teacher: Denoiser,
    x0: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    navigator: Navigator | None = None,
    temperature: float = 1.0,
    product: int = 1,
) -> torch.Tensor:
    """``steps`` exact jumps from ``x0 [B, L]``, each one navigated when ``navigator`` is given
    (its statistics accumulate in it: ``gap_m<k>`` is the energy gap at step k, 1-based); the
    teacher's logits are divided by ``temperature``. ``product = M > 1``: every step draws M
    navigated jumps from the same state and :func:`decorrelate` keeps only their per-position
    law, what a perfect product student of the navigated step would sample."""
    c = teacher.config
    base = blind_jump(make_scheduler(c.scheduler, c.exponent), c.source, c.mask_id)
    x = x0
    b = x.shape[0]
    if navigator is not None:
        navigator.begin_target()  # its per-call statistics gap_m<k> are then those of step k
    for k in range(steps):
        t = torch.full((b,), k / steps, dtype=torch.float32, device=x.device)
        h = torch.full((b,), 1 / steps, dtype=torch.float32, device=x.device)
        logits = filter_logits(teacher(x, t, h), None, None, temperature)
        if product > 1:  # M draws per row from one prediction (row-major, like the navigator)
            x, logits, t, h = (a.repeat_interleave(product, 0) for a in (x, logits, t, h))
        if navigator is None:
            x = base(x, logits, t, h, generator)
        else:
            x = navigator.navigate(base, x, logits, t, h, generator).next
        if product > 1:
            x = decorrelate(x.view(b, product, -1), generator)
    return x


def decorrelate(draws: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[B, M, L] -> [B, L]``: position i of row b takes its token from draw ``J_bi ~ U{1..M}``,
    independently per position. Its per-position law is exactly that of one draw (the mean over
    M i.i.d. draws of the same law), while two positions share a draw, and so keep the joint's
    correlation, only with probability 1/M: the product of the step's marginals, up to 1/M."""
    b, m, length = draws.shape
    pick = torch.randint(m, (b, 1, length), generator=generator, device=draws.device)
    return draws.gather(1, pick).squeeze(1)


def _row(args, name, temperature, navigator: Navigator | None, compass_dir, teacher, tok) -> None:
    path = Path(args.out) / f"{name}_{args.steps}.jsonl"
    want = {"model": str(args.teacher), "steps": args.steps, "num_samples": args.num,
            "seed": args.seed, "temperature": temperature,
            "compass": compass_dir, "candidates": args.candidates if navigator else 1,
            "product": args.product if navigator else 1}  # fmt: skip
    if path.is_file() and meta_path(path).is_file():
        meta = json.loads(meta_path(path).read_text())
        if all(meta.get("study", {}).get(k) == v for k, v in want.items()):
            print(f"== {path.name}: exists")
            return
    c = teacher.config
    gen = make_generator(args.seed)
    if navigator is not None:
        navigator.reset_stats()
    t0 = time.perf_counter()
    parts = []
    for start in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - start)
        x0 = sample_source((n, c.max_len), c.source, c.mask_id, c.num_classes, gen, "cpu")
        parts.append(navigated_sample(teacher, x0, args.steps, gen, navigator, temperature,
                                      args.product if navigator else 1))  # fmt: skip
    seconds = time.perf_counter() - t0
    ids = torch.cat(parts)
    meta = {
        "model": str(args.teacher), "model_type": "denoiser", "method": "teacher",
        "label": name, "source": c.source, "steps": args.steps, "num_samples": args.num,
        "seq_len": c.max_len, "seed": args.seed, "batch_size": args.batch_size,
        "sampler": {"kind": "dfm-exact-jump" if navigator is None else "dfm-navigated-jump",
                    "forward_cache": False, "top_k": None, "top_p": None,
                    "temperature": temperature, "draw_precision": "float64"},
        "tokenizer_fingerprint": tok.fingerprint(),
        "nfe_nominal": args.steps, "nfe_actual": float(args.steps),
        "nfe_per_sample": float(args.steps), "seconds": round(seconds, 4),
        "sec_per_sample": seconds / args.num, "threads": torch.get_num_threads(), "device": "cpu",
        "study": {**want, "navigation": navigator.stats() if navigator else None,
                  "compass_rows_per_step": args.candidates * args.product if navigator else 0},
        "created": now_iso(), "tsdfm_version": __version__,
    }  # fmt: skip
    write_samples(path, SampleSet(ids=ids, texts=tok.decode_batch(ids.tolist()), meta=meta))
    gap = f", energy gap {meta['study']['navigation']['gap']:.3f}" if navigator else ""
    print(f"== {path.name}: {seconds:.0f} s{gap}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True, help="teacher run dir (or its model/)")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--compass", nargs="*", default=[], metavar="NAME=DIR",
                    help="causal LMs to navigate by (`tsdfm train causal --role compass`)")  # fmt: skip
    ap.add_argument("--candidates", type=int, default=4, help="K candidate jumps per step")
    ap.add_argument("--temperatures", type=float, nargs="*", default=[1.0],
                    help="blind rows at these sampling temperatures (the curve to place on)")  # fmt: skip
    ap.add_argument("--product", type=int, default=1, metavar="M",
                    help="navigated rows keep only the per-position law of M navigated jumps per "
                    "step (decorrelate); 1 = the joint navigated sampler")  # fmt: skip
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", required=True, help="folder for the samples files")
    args = ap.parse_args(argv)
    if min(args.steps, args.candidates, args.num, args.batch_size, args.product) < 1:
        ap.error("--steps, --candidates, --product, --num and --batch-size must be >= 1")
    compasses = []
    for spec in args.compass:
        name, _, directory = spec.partition("=")
        if not name or not directory:
            ap.error(f"--compass {spec!r}: expected NAME=DIR")
        compasses.append((name, directory))
    try:
        teacher, tok = load_pretrained(resolve_model_dir(args.teacher), expect=Denoiser)
        if tok is None:
            raise TsdfmError(f"{args.teacher} has no tokenizer/ directory; cannot decode samples")
        teacher.eval()
        navigators = []
        for name, directory in compasses:
            compass = load_compass("ar", directory, teacher, seq_len=teacher.config.max_len)
            c = teacher.config
            nav = Navigator(compass, args.candidates, source=c.source, mask_id=c.mask_id)
            navigators.append((name, nav, directory))
    except TsdfmError as e:  # bad input: one line, exit 2, nothing written
        ap.exit(2, f"error: {e}\n")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for temp in args.temperatures:
        name = "teacher" if temp == 1.0 else f"teacher-T{temp:g}"
        _row(args, name, temp, None, None, teacher, tok)
    for name, nav, directory in navigators:
        prod = f"-prod{args.product}" if args.product > 1 else ""
        _row(
            args, f"teacher-nav-{name}-k{args.candidates}{prod}", 1.0, nav, directory, teacher, tok
        )


if __name__ == "__main__":
    main()
