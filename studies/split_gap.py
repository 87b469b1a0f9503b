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

Usage::

    python studies/split_gap.py --data runs/bench/data \\
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
from tsdfm.training.loop import BatchStream
from tsdfm.training.objectives import DenoisingObjective

VALIDATE_SEED_OFFSET = 1_000_003  # Trainer.validate's noise seed: cfg.seed + this


@torch.no_grad()
def split_loss(
    model: Denoiser, split, batches: int, batch_size: int, seed: int, loss: str = "ce"
) -> float:
    """Mean denoising loss over the first ``batches`` batches of ``split`` (as validation)."""
    c = model.config
    objective = DenoisingObjective(
        c.source, c.scheduler, c.exponent, c.mask_id, c.num_classes, loss
    )
    stream = BatchStream(split, batch_size, 0)
    gen = make_generator(seed + VALIDATE_SEED_OFFSET)
    n = min(batches, max(1, -(-len(split) // batch_size)))
    model.eval()
    return float(np.mean([float(objective(model, stream.batch(i), gen)[0]) for i in range(n)]))


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
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", help="markdown table (default: print only)")
    args = ap.parse_args(argv)
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
            split_loss(model, data.split(s), batches, batch_size, seed, loss)
            for s in ("train", "valid")
        ]
        rows.append((name, *losses, batches * batch_size))
        gap = losses[0] - losses[1]
        print(f"{name}: train {losses[0]:.4f}  valid {losses[1]:.4f}  gap {gap:+.4f}")
    text = "\n".join(
        [
            "| model | loss, training split | loss, validation split | gap (train - valid) | blocks per split |",
            "|---|---|---|---|---|",
            *(f"| {n} | {a:.4f} | {b:.4f} | {a - b:+.4f} | {k} |" for n, a, b, k in rows),
        ]
    )
    text += (
        f"\n\n(`studies/split_gap.py --data {args.data}`: the DFM denoising loss, nats per masked "
        "token, float32, the same noise on both splits.)\n"
    )
    if args.out:
        publish_text(Path(args.out), text)
    return text


if __name__ == "__main__":
    main()
