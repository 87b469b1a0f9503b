"""Has a teacher memorised its training text? Its loss on the training and validation splits.

Issue 36 asks to watch the train/validation gap of a teacher that has seen its 1.30M training
tokens about 70 times. ``log.csv``'s training loss cannot answer it: it is the raw weights on
one noisy batch per step, while ``eval.csv`` is the EMA weights on fixed validation batches. Here
one set of weights is scored on both splits by the same estimator the trainer validates with
(``Trainer.validate``): the DFM denoising loss on the first ``--batches`` batches of
``--batch-size`` blocks of each split (epoch-0 order with seed 0), each batch's noise ``t, x_t``
from one generator seeded ``seed + 1,000,003``, float32. With the run's own seed and batch size
(the defaults, read from ``RUN/config.yaml``) the validation column is the run's last
``eval.csv`` value up to the autocast precision it trained under.

    gap = loss(train) - loss(valid)   (negative: better on text it has seen)

Its standard error comes from the batch-by-batch differences (batch i of both splits draws the
same noise). One pass over the 218 bench validation blocks leaves it at about 0.06 nats, too
coarse for a memorisation of a few hundredths; ``--passes 8`` re-reads both splits with fresh
noise (about 0.015).

Usage::

    python studies/split_gap.py --data runs/bench/data --passes 8 \\
        --model bench=runs/bench/teacher bench-longer=runs/bench-longer/teacher \\
        --out docs/results/bench-longest/split_gap.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from tsdfm.artifacts import publish_text
from tsdfm.config import load_config
from tsdfm.data import load_prepared
from tsdfm.distributed import make_generator
from tsdfm.errors import TsdfmError
from tsdfm.generator import resolve_model_dir
from tsdfm.models import Denoiser, load_pretrained
from tsdfm.training.loop import VALIDATION_SEED_OFFSET, BatchStream
from tsdfm.training.objectives import DenoisingObjective


@torch.no_grad()
def split_loss(
    model: Denoiser,
    split,
    batches: int,
    batch_size: int,
    seed: int,
    loss: str = "ce",
    passes: int = 1,
) -> np.ndarray:
    """The denoising loss of each of the first ``batches`` batches of ``split`` (at most one
    pass over it, as validation: with ``passes=1`` their mean is what the trainer logs), then
    ``passes - 1`` more such passes in the stream's next epochs with fresh noise."""
    c = model.config
    objective = DenoisingObjective(
        c.source, c.scheduler, c.exponent, c.mask_id, c.num_classes, loss
    )
    stream = BatchStream(split, batch_size, 0)
    gen = make_generator(seed + VALIDATION_SEED_OFFSET)
    n = min(batches, max(1, -(-len(split) // batch_size))) * passes
    model.eval()
    return np.array([float(objective(model, stream.batch(i), gen)[0]) for i in range(n)])


def run_settings(model_path: Path) -> tuple[int, int, int, str]:
    """``(seed, batch_size, eval_batches, loss)`` of the teacher run holding ``model_path`` (its
    ``config.yaml``), or the trainer's defaults when the model was not trained here."""
    for cand in (model_path, model_path.parent):
        if (cand / "config.yaml").is_file() and (cand / "summary.json").is_file():
            train = load_config(cand / "config.yaml").teacher.train
            return train.seed, train.batch_size, train.eval_batches, train.loss
    train = load_config(None).teacher.train
    return train.seed, train.batch_size, train.eval_batches, train.loss


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared data the teachers trained on")
    ap.add_argument("--model", nargs="+", required=True, metavar="NAME=DIR")
    ap.add_argument("--batches", type=int, default=None, help="default: the run's eval_batches")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    ap.add_argument("--seed", type=int, default=None, help="default: the run's training seed")
    ap.add_argument(
        "--passes",
        type=int,
        default=1,
        help="read each split this many times, fresh noise each time (default 1: the validation "
        "column is then the run's own; more passes shrink the gap's standard error)",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", help="markdown table (default: print only)")
    args = ap.parse_args(argv)
    if args.passes < 1:
        ap.error(f"--passes must be >= 1, got {args.passes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [spec.partition("=") for spec in args.model]
    for spec, (name, sep, path) in zip(args.model, specs, strict=True):
        if not sep or not name or not path:
            ap.error(f"--model {spec!r}: expected NAME=DIR")
    data = load_prepared(Path(args.data))
    rows = []
    for spec, (name, _, path) in zip(args.model, specs, strict=True):
        model_dir = resolve_model_dir(path)
        model, _ = load_pretrained(model_dir)
        if not isinstance(model, Denoiser):
            raise TsdfmError(f"--model {spec}: {model_dir} is not a denoiser (teacher)")
        seed, batch_size, batches, loss = run_settings(Path(path))
        seed = seed if args.seed is None else args.seed
        batch_size = args.batch_size or batch_size
        batches = args.batches or batches
        losses = [
            split_loss(model, data.split(s), batches, batch_size, seed, loss, args.passes)
            for s in ("train", "valid")
        ]
        train, valid = (float(v.mean()) for v in losses)
        # batch i of each split draws the same t and masks (one generator, same shapes), so the
        # per-batch differences cancel most of the noise: their spread gives the s.e. (over the
        # batches both splits have; the means above use every batch, as the trainer does)
        diff = losses[0][: len(losses[1])] - losses[1][: len(losses[0])]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        rows.append((name, train, valid, se, *(len(v) * batch_size for v in losses)))
        print(f"{name}: train {train:.4f}  valid {valid:.4f}  gap {train - valid:+.4f} ± {se:.4f}")
    text = "\n".join(
        [
            "| model | loss, training split (blocks) | loss, validation split (blocks) | gap (train - valid) ± s.e. |",
            "|---|---|---|---|",
            *(
                f"| {n} | {a:.4f} ({ka}) | {b:.4f} ({kb}) | {a - b:+.4f} ± {se:.4f} |"
                for n, a, b, se, ka, kb in rows
            ),
        ]
    )
    text += (
        f"\n\n(`studies/split_gap.py --data {args.data}`: the DFM denoising loss, nats per masked "
        "token, float32, the same noise on both splits; s.e. of the gap from the batch-by-batch "
        "differences (paired by that shared noise); "
        "a split smaller than the batches asked for is read once, its last batch wrapping.)\n"
    )
    if args.out:
        publish_text(Path(args.out), text)
    return text


if __name__ == "__main__":
    main()
