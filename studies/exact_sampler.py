"""Samples from the EXACT denoiser of the markov chain with the finite-step sampler.

What a perfect teacher scores at S steps (and, for the mask source, what a student trained on
the marginal-exact probability-mixture target converges to): the row that separates the
sampler's own error from the model's. See ``tsdfm.models.oracle``. Usage::

    python studies/exact_sampler.py --data runs/markov/data --steps 1024 8 4 2 1 \\
        --num 2048 --seed 4321 --out docs/results/markov-shaping/samples

Writes ``exact_<steps>.jsonl`` (+ ``.meta.json``, method ``exact``) beside the other rows, so
``studies/student_study.py --eval-only`` evaluates them with everything else.

``--temperature T ...`` samples the exact posterior sharpened (T < 1) or flattened (T > 1) before
every jump, into ``exact-T<T>_<steps>.jsonl``: what a *perfect* teacher scores when it may
deviate from the true marginals by a temperature, i.e. how far below the exact sampler's
few-step n-gram TV such a deliberate distortion of the target can reach.

``--source uniform`` drives the uniform-source exact denoiser (forward-backward through the
noise, linear scheduler kappa(t) = t as in ``configs/markov.yaml``) from uniform noise instead:
the perfect uniform-source teacher. Its forward pass cannot be cached, so S steps cost S calls.

``--composite N --chains M`` samples instead what a *perfectly distilled* student anchored at
N steps would (``tsdfm.flow.composite``): every one of the S big steps is the per-position law
of N / S exact jumps, drawn from M fine chains, into ``exact-composite<N>[-uniform]_<S>.jsonl``.
For the mask source it matches the plain exact sampler in law; for the uniform source it shows
where the distillation target itself lies, apart from any network's fit of it.
``--teacher DIR`` drives the composite with a trained teacher instead of the exact denoiser
(``teacher-composite<N>[-uniform]_<S>.jsonl``): where a teacher-anchored student's target lies.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tsdfm import __version__
from tsdfm.artifacts import now_iso
from tsdfm.data import load_prepared
from tsdfm.errors import TsdfmError
from tsdfm.flow import make_scheduler, sample, sample_source
from tsdfm.flow.composite import Composite
from tsdfm.generation import SampleSet, write_samples
from tsdfm.models.oracle import (
    MarkovOracleDenoiser,
    MarkovUniformOracleDenoiser,
    load_markov_oracle,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared markov data dir")
    ap.add_argument("--steps", type=int, nargs="+", default=[1024, 8, 4, 2, 1])
    ap.add_argument("--num", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=[1.0],
        help="temperatures applied to the exact posterior before every jump (default 1)",
    )
    ap.add_argument(
        "--source",
        choices=("mask", "uniform"),
        default="mask",
        help="the path's source: all-[MASK] (default) or uniform noise",
    )
    ap.add_argument(
        "--composite",
        type=int,
        metavar="N",
        help="sample the composed law of N fine steps per unit time (a perfectly distilled "
        "student anchored at N steps) instead of one exact jump per step",
    )
    ap.add_argument("--chains", type=int, default=32, help="fine chains per composite step")
    ap.add_argument(
        "--teacher", help="with --composite: compose a trained teacher's fine steps instead"
    )
    ap.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where a --teacher runs (auto: the GPU if there is one); the exact denoisers and "
        "every random draw stay on the CPU, so the samples do not depend on it",
    )
    ap.add_argument("--out", required=True, help="folder for exact[-T<T>]_<steps>.jsonl")
    args = ap.parse_args()
    if any(not t > 0 for t in args.temperature):
        raise SystemExit(f"error: temperatures must be > 0, got {args.temperature}")
    if args.composite is not None:
        bad = [s for s in args.steps if s > args.composite or args.composite % s]
        if bad or args.chains < 1 or args.temperature != [1.0]:
            raise SystemExit(
                f"error: --composite {args.composite} needs every --steps to divide it (not "
                f"{bad}), --chains >= 1 and no --temperature"
            )

    try:
        chain, oracle, seq_len = load_markov_oracle(args.data)
    except TsdfmError as e:
        raise SystemExit(f"error: {e}") from e
    tok = load_prepared(Path(args.data)).tokenizer
    if args.source == "uniform":
        oracle = MarkovUniformOracleDenoiser(chain, seq_len, make_scheduler("polynomial", 1.0))
    if args.teacher:
        oracle = _load_teacher(args.teacher, args.source, tok.fingerprint(), args.composite)
        oracle = _OnDevice(oracle, args.device)
    for temp in args.temperature:
        for steps in args.steps:
            ids, meta = _draw(oracle, seq_len, steps, temp, args)
            meta["tokenizer_fingerprint"] = tok.fingerprint()
            name = "exact" if temp == 1.0 else f"exact-T{temp:g}"
            if args.composite is not None:
                name = f"exact-composite{args.composite}"
            if args.source == "uniform":
                name = name.replace("exact", "exact-uniform", 1)
            if args.teacher:
                name = name.replace("exact", "teacher", 1)
                meta["model"], meta["model_type"] = args.teacher, "teacher"
                meta["method"] = "teacher-composite"
                meta["label"] = meta["label"].replace("exact", "teacher", 1)
            path = write_samples(
                Path(args.out) / f"{name}_{steps}.jsonl",
                SampleSet(ids, tok.decode_batch(ids), meta),
            )
            what = f"{args.teacher} composite" if args.teacher else "exact denoiser"
            print(f"{what} ({args.source}) T={temp:g} @ {steps} steps -> {path}")


def _load_teacher(path: str, source: str, fingerprint: str, composite: int | None):
    """The trained denoiser that replaces the exact one (``--teacher``), checked against the
    data and the requested source before any sampling."""
    from tsdfm.generator import resolve_model_dir
    from tsdfm.models import Denoiser, load_pretrained

    if composite is None:
        raise SystemExit("error: --teacher needs --composite (the plain sampler is tsdfm sample)")
    try:
        model, _ = load_pretrained(resolve_model_dir(path), expect=Denoiser)
    except TsdfmError as e:
        raise SystemExit(f"error: {e}") from e
    c = model.config
    if c.source != source:
        raise SystemExit(f"error: {path} is a {c.source}-source teacher; pass --source {c.source}")
    if c.tokenizer_fingerprint and c.tokenizer_fingerprint != fingerprint:
        raise SystemExit(f"error: {path} was trained with another tokenizer than this data's")
    return model.eval()  # ``mask_id`` is a Denoiser property, as on the exact denoisers


class _OnDevice:
    """A trained teacher evaluated on another device (a GPU): states and times go over, the
    logits come back as float32 on the CPU, where the composite's CPU generator draws from
    them; so only the forward passes move, not the random numbers."""

    def __init__(self, model, device: str):
        from tsdfm.distributed import resolve_device

        try:
            self.device = resolve_device(device)
        except TsdfmError as e:
            raise SystemExit(f"error: {e}") from e
        self.model = model.to(self.device)
        self.config, self.mask_id = model.config, model.mask_id

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        out = self.model(x.to(self.device), *(c.to(self.device) for c in cond))
        return out.float().cpu()


def _draw(
    oracle: MarkovOracleDenoiser | MarkovUniformOracleDenoiser,
    L: int,
    steps: int,
    temp: float,
    args,
) -> tuple:
    """``args.num`` sequences from the exact posterior at ``steps`` jumps and temperature
    ``temp`` (one generator seeded with ``args.seed`` per row), and their provenance."""
    c = getattr(oracle, "config", None)  # a --teacher's own scheduler; the exact ones: linear
    sched = make_scheduler(c.scheduler, c.exponent) if c else make_scheduler("polynomial", 1.0)
    gen = torch.Generator().manual_seed(args.seed)
    chunks, t0, nfe = [], time.perf_counter(), 0
    for start in range(0, args.num, args.batch_size):
        b = min(args.batch_size, args.num - start)
        x0 = sample_source((b, L), args.source, oracle.mask_id, oracle.mask_id, gen)
        if args.composite is not None:
            sub = args.composite // steps
            comp = Composite(sub, args.chains, sched, args.source, oracle.mask_id)
            chunks.append(comp.sample(oracle, x0, steps, gen))
            nfe = steps * sub
            continue
        cache = args.source == "mask"
        res = sample(
            oracle,
            x0,
            steps,
            sched,
            args.source,
            oracle.mask_id,
            gen,
            cache=cache,
            temperature=temp,
        )
        chunks.append(res.ids)
        nfe = max(nfe, res.nfe_actual)
    meta = {
        "model": f"exact denoiser of the markov chain ({args.data})",
        "model_type": "oracle",
        "method": "exact" if args.composite is None else "exact-composite",
        "label": (
            "exact denoiser" if args.composite is None else f"exact composite {args.composite}"
        )
        + ("" if args.source == "mask" else " (uniform)"),
        "source": args.source,
        "steps": steps,
        "num_samples": args.num,
        "seq_len": L,
        "seed": args.seed,
        "sampler": {
            "kind": "dfm-exact-jump" if args.composite is None else "composite",
            "forward_cache": args.source == "mask" and args.composite is None,
            "composite_steps": args.composite,
            "chains": args.chains if args.composite is not None else None,
            "temperature": temp,
            "draw_precision": "float64",
        },
        "nfe_nominal": steps,
        "nfe_actual": nfe,
        "seconds": round(time.perf_counter() - t0, 4),
        "created": now_iso(),
        "tsdfm_version": __version__,
    }
    return torch.cat(chunks), meta


if __name__ == "__main__":
    main()
