"""What each arm of a student study costs and how hard its compass steers (one markdown file).

Two tables from a study's run directory, no model loaded:

1. the compasses (``compass-*/summary.json``): parameters, their ratio to the teacher's, and the
   validation CE (nats per token of the causal LM; its exponential is the compass's own
   perplexity on held-out text, comparable with the evaluators' on the same data);
2. the student arms (``student-<arm>-s<seed>/``): seconds per training step (median over
   seeds, and its ratio to the blind arm), and from the training log the navigation statistics
   averaged over every logged row: ``nav_gap``, the energy gap ``mean_j E_j - E_chosen``
   (nats per token; ~0 means selection changes nothing), and ``nav_changed``, how often the
   chosen candidate is not the one a blind jump keeps (K = 4: 3/4 for a selection independent
   of the candidates' order).

A compass can only transfer what it knows and the teacher does not: its CE says how much it
knows, the energy gap how far it pulled the targets. Usage::

    python studies/arm_cost.py runs/bench-longest --out docs/results/bench-compass/cost.md
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from pathlib import Path

from tsdfm.artifacts import publish_text

NAV = ("nav_gap", "nav_changed")


def _summary(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path}: not a readable summary.json ({e})") from e


def _nav_means(log: Path) -> dict[str, float]:
    """Mean of each navigation column over the training log's rows (empty for a blind arm)."""
    if not log.is_file():
        return {}
    with log.open() as f:
        rows = list(csv.DictReader(f))
    out = {}
    for key in NAV:
        vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
        if vals:
            out[key] = statistics.fmean(vals)
    return out


def compass_table(run: Path) -> list[str]:
    teacher = run / "teacher" / "summary.json"
    t_params = _summary(teacher).get("parameters") if teacher.is_file() else None
    lines = [
        "| compass | parameters | x teacher | validation CE | validation PPL |",
        "|---|---|---|---|---|",
    ]
    for s in sorted(run.glob("compass-*/summary.json")):
        d = _summary(s)
        n, ce = d.get("parameters"), d.get("final_val_loss")
        ratio = f"{n / t_params:.2f}x" if n and t_params else "–"
        lines.append(
            f"| {s.parent.name} | {n:,} | {ratio} | {ce:.4f} | {math.exp(ce):,.1f} |"
            if n and ce is not None
            else f"| {s.parent.name} | – | – | – | – |"
        )
    return lines if len(lines) > 2 else []


def arm_table(run: Path) -> list[str]:
    arms: dict[str, list[tuple[float, dict]]] = {}
    for s in sorted(run.glob("student-*-s*/summary.json")):
        arm = re.sub(r"-s\d+$", "", s.parent.name)
        sec = _summary(s).get("sec_per_step")
        if sec is not None:
            arms.setdefault(arm, []).append((float(sec), _nav_means(s.parent / "log.csv")))
    if not arms:
        raise SystemExit(f"error: no finished student-*-s*/summary.json under {run}")
    blind = [sec for sec, _ in arms.get("student-blind", [])]
    blind_sec = statistics.median(blind) if blind else None
    lines = [
        "| arm | seconds per training step (median over seeds) | vs blind | energy gap "
        "(nats/token) | chosen != blind candidate | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for arm, runs in arms.items():
        sec = statistics.median(r[0] for r in runs)
        nav = [
            f"{statistics.median(vals):.4f}"
            if (vals := [r[1][k] for r in runs if k in r[1]])
            else "–"
            for k in NAV
        ]
        vs = f"{sec / blind_sec:.2f}x" if blind_sec else "–"
        lines.append(f"| {arm} | {sec:.2f} | {vs} | {nav[0]} | {nav[1]} | {len(runs)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "run", type=Path, help="a study's run directory (teacher/, compass-*/, student-*/)"
    )
    ap.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = ap.parse_args(argv)
    if not args.run.is_dir():
        print(f"error: {args.run} is not a directory; pass the study's --run-dir")
        return 2
    compasses = compass_table(args.run)
    parts = [
        f"Cost and steering per arm (`studies/arm_cost.py {args.run}`); energy gap and chosen "
        "share are means over each run's logged training rows, then the median over seeds.",
        "",
        *arm_table(args.run),
    ]
    if compasses:
        parts += [
            "",
            "The compasses (validation CE: the causal LM's own, nats per token):",
            "",
            *compasses,
        ]
    publish_text(args.out, "\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
