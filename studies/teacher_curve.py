"""A teacher's validation curve across warm-started stages, and whether it has flattened.

A teacher extended stage by stage (``teacher.init_from``: bench -> bench-long -> bench-longer
-> bench-longest) logs each stage's steps from zero. This lines the stages' ``eval.csv`` up on
one step axis (each stage starts where the previous one's ``summary.json`` says it ended) and
applies issue 36's stopping rule to the last stage: the validation loss (EMA weights, as the
trainer logs it) must fall by less than 1% over the last 5,000 steps,

    fall = (L(s_end - 5000) - L(s_end)) / L(s_end - 5000) < 0.01,

with ``L(s_end - 5000)`` the first logged point at or after that step. Usage::

    python studies/teacher_curve.py runs/bench/teacher runs/bench-long/teacher \\
        runs/bench-longer/teacher runs/bench-longest/teacher --out teacher_curve.md
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from tsdfm.artifacts import publish_text

WINDOW = 5000  # steps over which the fall is measured
PLATEAU = 0.01  # the threshold: a fall under 1% per WINDOW steps


def read_stage(run: Path) -> tuple[list[tuple[int, float]], int]:
    """The stage's logged ``(step, val_loss)`` points and its last step; a finished stage that
    logged no validation (``eval_every`` beyond its steps) has no points, only its steps."""
    try:  # a finished stage says how many steps it ran; an unfinished one, its last logged point
        steps = int(json.loads((run / "summary.json").read_text())["steps"])
    except (OSError, KeyError, ValueError):
        steps = None
    if steps is not None and not (run / "eval.csv").exists():
        return [], steps
    try:
        with (run / "eval.csv").open() as f:
            points = [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError) as e:
        raise SystemExit(f"error: {run}/eval.csv: not a training run's validation log ({e})") from e
    if not points:
        raise SystemExit(f"error: {run}/eval.csv has no validation point yet")
    if steps is None:
        steps = points[-1][0]
    return points, steps


def plateau(points: list[tuple[int, float]], window: int = WINDOW) -> tuple[tuple, tuple, float]:
    """``(start point, end point, relative fall)`` over the last ``window`` steps of ``points``."""
    last = points[-1]
    first = next(p for p in points if p[0] >= last[0] - window)
    return first, last, (first[1] - last[1]) / first[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="the stages' run directories, in order")
    ap.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = ap.parse_args(argv)
    lines = ["| stage | step (stage) | step (total) | validation loss |", "|---|---|---|---|"]
    offset, stage_points = 0, []
    for run in args.runs:
        stage_points, steps = read_stage(run)
        lines += [
            f"| {run.parent.name} | {s:,} | {offset + s:,} | {v:.4f} |" for s, v in stage_points
        ]
        if not stage_points:
            lines.append(f"| {run.parent.name} | {steps:,} | {offset + steps:,} | not logged |")
        offset += steps
    if not stage_points:
        raise SystemExit(f"error: the last stage, {args.runs[-1]}, logged no validation loss")
    first, last, fall = plateau(stage_points)
    span = last[0] - first[0]
    if span < WINDOW:
        verdict = f"only {span:,} steps logged: too few for the issue's 1% per {WINDOW:,} steps"
    else:
        verdict = (
            "under" if fall < PLATEAU else "NOT under"
        ) + f" the issue's 1% per {WINDOW:,} steps"
    head = (
        f"Validation loss of the teacher across its stages (`studies/teacher_curve.py`), "
        f"{offset:,} steps in all. Last stage: {first[1]:.4f} at its step {first[0]:,} -> "
        f"{last[1]:.4f} at {last[0]:,}, a fall of {100 * fall:.2f}% over {span:,} steps "
        f"({verdict}).\n\n"
    )
    publish_text(args.out, head + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
