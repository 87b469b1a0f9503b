"""Do the compasses and the evaluators agree on which samples are good? (issue 36's "measured
reason").

A navigated student can gain, at equal entropy, only what its compass prefers *and* the
evaluators reward. This script scores the same samples with every scorer (compasses and
evaluators alike: any ``NAME=DIR`` causal LM, or ``smollm2-135m``) and prints

1. each samples file's gen-PPL under every scorer (plus the held-out test text), so a compass's
   own view of the shaped rows sits beside the evaluators': a compass that already sees the
   shaped student far ahead of the blind one while the evaluators do not has taught its own
   taste, not the evaluators';
2. the agreement between every pair of scorers: Spearman's rank correlation of the per-sample
   NLL, *within* each samples file (the mean over files; a navigator ranks candidates drawn
   from one state, so within-row ranking is what selection uses) and pooled over all files.

A sample's score is its NLL per token of the scorer's own tokenization: the per-sample form of
the gen-PPL each evaluator reports (a pooled NLL per token), and of the compass's energy (a mean
NLL per token). Neither per byte nor per sample: decoded samples differ in length (special
tokens are dropped), and a total or per-byte NLL ranks them by length, on which any two scorers
agree (two *random* LMs of one tokenizer correlated at 0.98 per byte and 0.65 per sample, at
-0.40 per token; tests/test_scorer_agreement.py).

Usage (the bench-compass sweep runs this; SmolLM2 takes ~80 s per file on 2 cores)::

    python studies/scorer_agreement.py --data runs/bench/data \\
        --samples docs/results/bench-compass/samples/{teacher_1024,student-*-s0_8}.jsonl* \\
        --scorers c010=runs/bench-longest/compass-c010 c100=runs/bench-longest/compass-c100 \\
            ar-small=runs/bench/evaluator-small/model smollm2-135m \\
        --out docs/results/bench-compass/agreement.md
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tsdfm.artifacts import publish_text
from tsdfm.data import load_prepared
from tsdfm.errors import TsdfmError
from tsdfm.evaluation.harness import load_sample_file
from tsdfm.evaluation.references import reference_sample
from tsdfm.evaluation.registry import make_evaluator
from tsdfm.sample_files import samples_stem

HELD_OUT = "held-out text (test split)"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on ranks; ties, measure-zero for float NLLs, take
    their order of appearance). NaN for fewer than 3 points or a constant input."""
    if len(a) < 3:
        return float("nan")
    ra, rb = (np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float) for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def agreement(per_sample: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """Per pair of scorers: the mean over rows of the within-row Spearman correlation of
    per-sample NLL, and the correlation pooled over every row's samples. ``per_sample[row]
    [scorer]`` is the NLL per token of each sample of the row."""
    scorers = list(next(iter(per_sample.values())))
    out = []
    for s, t in itertools.combinations(scorers, 2):
        within = [spearman(v[s], v[t]) for v in per_sample.values()]
        within = [w for w in within if np.isfinite(w)]
        pooled = spearman(
            np.concatenate([v[s] for v in per_sample.values()]),
            np.concatenate([v[t] for v in per_sample.values()]),
        )
        out.append(
            {
                "pair": (s, t),
                "within": float(np.mean(within)) if within else float("nan"),
                "within_range": (min(within), max(within)) if within else None,
                "pooled": pooled,
            }
        )
    return out


def _model_dir(spec: str) -> str:
    """``NAME=RUN_DIR`` -> ``NAME=RUN_DIR/model`` when the run's model directory is inside it."""
    name, sep, path = spec.partition("=")
    if sep and (Path(path) / "model" / "config.json").is_file():
        return f"{name}={Path(path) / 'model'}"
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared text data dir (tokenizer, test split)")
    ap.add_argument("--samples", nargs="+", required=True, help="samples files to score")
    ap.add_argument(
        "--scorers",
        nargs="+",
        required=True,
        help="NAME=DIR causal LMs (a compass's run dir or model dir, an evaluator) or "
        "smollm2-135m; at least two",
    )
    ap.add_argument("--num-ref", type=int, default=256, help="held-out sequences scored too")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True, help="markdown file to write")
    args = ap.parse_args(argv)
    try:
        if len(args.scorers) < 2:
            raise TsdfmError("--scorers needs at least two scorers to compare")
        data = load_prepared(args.data)
        if data.tokenizer.kind != "bpe":
            raise TsdfmError(f"{args.data} is not a text corpus: scorers read decoded text")
        files = [load_sample_file(p, data.tokenizer, Path(args.data)) for p in args.samples]
        ref = reference_sample(data, args.num_ref, files[0].ids.shape[1])
        rows = {HELD_OUT: ref.texts}
        rows |= {samples_stem(f.path): f.texts for f in files}
        scorers = [make_evaluator(_model_dir(s), data, device=args.device) for s in args.scorers]
    except TsdfmError as e:
        print(f"error: {e}")
        return 2

    ppl: dict[str, dict[str, float]] = {row: {} for row in rows}
    per_sample: dict[str, dict[str, np.ndarray]] = {row: {} for row in rows}
    with tqdm(total=len(rows) * len(scorers), desc="scoring", unit="row") as bar:
        for scorer in scorers:
            for row, texts in rows.items():
                scores = scorer.score(texts)
                ppl[row][scorer.name] = scores.gen_ppl
                per_sample[row][scorer.name] = scores.nll_sum / np.maximum(scores.tokens, 1)
                bar.update()

    names = [s.name for s in scorers]
    lines = [
        "gen-PPL of each row under each scorer (compasses and evaluators alike):",
        "",
        "| row | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    lines += [f"| {r} | " + " | ".join(f"{ppl[r][n]:,.1f}" for n in names) + " |" for r in rows]
    lines += [
        "",
        "Agreement: Spearman's rank correlation of per-sample NLL per token, within each row "
        f"(mean and range over the {len(rows)} rows, held-out text included) and pooled over "
        "all rows' samples.",
        "",
        "| scorers | within rows: mean (min..max) | pooled |",
        "|---|---|---|",
    ]
    for a in agreement(per_sample):
        lo_hi = a["within_range"]
        span = f" ({lo_hi[0]:.2f}..{lo_hi[1]:.2f})" if lo_hi else ""
        lines.append(
            f"| {a['pair'][0]} / {a['pair'][1]} | {a['within']:.2f}{span} | {a['pooled']:.2f} |"
        )
    head = (
        f"Scorer agreement on `{args.data}` (`studies/scorer_agreement.py`; "
        f"{len(files)} samples files, {args.num_ref} held-out sequences).\n\n"
    )
    publish_text(args.out, head + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
