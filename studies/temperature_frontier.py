"""Equal-entropy view of a markov study sampled at several temperatures (one figure, one table).

A model sampled at temperature T < 1 trades entropy for truth-NLL and n-gram TV at no training
cost and the same number of forward passes. So a method that lowers truth-NLL or TV *and*
entropy is only better than another if it beats that other model's temperature curve at the
same entropy. This script draws each model family (the row's arm without its seed and ``T=``
tag) as one line through its temperatures, seeds averaged, in two panels: truth-NLL and excess
k+1-gram TV over the floor (TV of as many true chain samples), both against sample entropy,
with the data's point as a star. Usage::

    python studies/student_study.py ... --temperatures 0.85 0.9 0.95 --out DIR   # then
    python studies/temperature_frontier.py DIR/results.json --out DIR/plots/temperature_frontier.png

``--x truth-nll`` draws one panel instead, excess TV against truth-NLL: the view for the
uniform source, where sampling temperature barely moves entropy (3.462 -> 3.453 from T = 1 to
0.85 on markov) and so the two curves are compared at equal truth-NLL. ``--families`` keeps
only the named families (e.g. ``blind blind-exact ar-k8-exact``).

Also prints the table behind the figure (family, T, seeds, entropy, truth-NLL, excess TV).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from tsdfm.evaluation.labels import without_seed


def families(results: dict) -> tuple[dict[str, list[tuple]], dict]:
    """``{family: [(T, seeds, entropy, truth_nll, excess_tv), ...]}`` sorted by T, and the
    data row. Rows without truth metrics (text corpora) are refused by the caller."""
    rows = results["rows"]
    data = next(r for r in rows if r["method"] == "data")
    order = str(data.get("ngram_order") or 2)
    floor = data["ngram_tv"][order]
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in rows:
        if r["method"] == "data" or r.get("truth_nll") is None:
            continue
        name = without_seed(r.get("arm") or r["method"])
        groups[(name, float(r.get("temperature") or 1.0))].append(r)
    out: dict[str, list[tuple]] = defaultdict(list)
    for (name, temp), rs in groups.items():
        out[name].append(
            (
                temp,
                len(rs),
                float(np.mean([r["entropy"] for r in rs])),
                float(np.mean([r["truth_nll"] for r in rs])),
                float(np.mean([r["ngram_tv"][order] - floor for r in rs])),
            )
        )
    return {k: sorted(v) for k, v in out.items()}, data


def plot(fams: dict[str, list[tuple]], data: dict, path: Path, x: str = "entropy") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x == "entropy":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        panels = ((axes[0], 2, 3, "truth-NLL (nats/token)"), (axes[1], 2, 4, "excess TV"))
        xlabel = "sample entropy (nats); numbers: sampling temperature"
    else:
        fig, ax = plt.subplots(1, 1, figsize=(6.5, 4.5))
        axes = [ax]
        panels = ((ax, 3, 4, "excess 2-gram TV over the floor"),)
        xlabel = "truth-NLL (nats/token); numbers: sampling temperature"
    for ax, xcol, col, label in panels:
        for name, pts in fams.items():
            xs, ys = [p[xcol] for p in pts], [p[col] for p in pts]
            ax.plot(xs, ys, marker="o", label=name)
            for p in pts:
                ax.annotate(
                    f"{p[0]:g}",
                    (p[xcol], p[col]),
                    fontsize=6,
                    xytext=(2, 2),
                    textcoords="offset points",
                )
        if xcol == 2 and col == 3:
            ax.plot([data["entropy"]], [data["truth_nll"]], "k*", ms=12, label="data")
        elif xcol == 2:
            ax.axvline(data["entropy"], color="k", ls=":", lw=1, label="data entropy")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.suptitle("8-step rows through their sampling temperatures (lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="results.json of a markov study")
    ap.add_argument("--steps", type=int, default=8, help="sampling steps of the rows to draw")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument(
        "--x",
        choices=["entropy", "truth-nll"],
        default="entropy",
        help="x axis: sample entropy (two panels) or truth-NLL (one panel: excess TV)",
    )
    ap.add_argument("--families", nargs="*", help="only these families (default: all)")
    args = ap.parse_args()
    results = json.loads(Path(args.results).read_text())
    results["rows"] = [
        r for r in results["rows"] if r["method"] == "data" or r.get("steps") == args.steps
    ]
    if not any(r.get("truth_nll") is not None for r in results["rows"]):
        raise SystemExit(f"error: {args.results} has no truth metrics (a markov study is needed)")
    fams, data = families(results)
    if args.families:
        missing = sorted(set(args.families) - set(fams))
        if missing:
            raise SystemExit(f"error: no family {missing} in {args.results}; have {sorted(fams)}")
        fams = {k: v for k, v in fams.items() if k in args.families}
    print("| family | T | seeds | entropy | truth-NLL | excess TV |")
    print("|---|---|---|---|---|---|")
    for name, pts in fams.items():
        for t, n, h, nll, tv in pts:
            print(f"| {name} | {t:g} | {n} | {h:.4f} | {nll:.4f} | {tv:.4f} |")
    print(f"-> {plot(fams, data, Path(args.out), args.x)}")


if __name__ == "__main__":
    main()
