"""Compare text rows with a reference model at the same sample entropy (one markdown table).

The reference is one model sampled at several temperatures (rows whose label matches
``--reference``, a glob); each ``--rows`` row is placed on that curve by log-linear
interpolation in entropy (``studylib.frontier``) and its gen-PPL gap to the reference at
its own entropy is printed per evaluator. Rows outside the reference's entropy range get "–".
Several ``results.json`` files can be given; rows with the same label and the same samples
(same entropy: one samples file scored by different evaluators) are merged, the later file
winning per evaluator. A label whose samples differ (another run of the same model command,
another entropy) is taken whole from the later file, with a note on stderr: merging would pair
one run's entropy with another run's perplexity.
Example (the bench mask-source students against the 8-step teacher's temperature curve)::

    python studies/equal_entropy.py docs/results/bench-ablations/blind-t98/results.json \
        docs/results/bench-ablations/frontier/eval-teacher/results.json \
        docs/results/bench-ablations/frontier/eval-t98/results.json \
        --reference 'teacher_8' 'teacher_8_T*' --rows 'student-blind-t98-s0_8*' \
        --out docs/results/bench-ablations/frontier/equal_entropy_t98.md
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import sys
from pathlib import Path

from studylib.frontier import arm_verdicts, equal_entropy_gaps


def _load(paths: list[Path]) -> tuple[dict[str, dict], list[str]]:
    rows: dict[str, dict] = {}
    evaluators: list[str] = []
    for path in paths:
        try:
            file_rows = json.loads(path.read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(
                f"{path}: not a readable `tsdfm evaluate` results.json ({err})"
            ) from err
        for row in file_rows:
            if not row.get("gen_ppl"):
                continue
            earlier = rows.get(row["label"])
            if earlier is not None and _same_samples(earlier, row):
                earlier["gen_ppl"] = {**earlier["gen_ppl"], **row["gen_ppl"]}
            else:
                if earlier is not None:
                    print(
                        f"note: {row['label']} of {path} replaces an earlier file's row with "
                        f"other samples (entropy {earlier.get('entropy')} -> {row.get('entropy')})",
                        file=sys.stderr,
                    )
                rows[row["label"]] = dict(row)
            evaluators += [e for e in row["gen_ppl"] if e not in evaluators]
    return rows, evaluators


def _same_samples(a: dict, b: dict) -> bool:
    """Two rows of one samples file: the same entropy (a per-sample statistic of the ids, so
    equal for any evaluator) to within rounding."""
    ea, eb = a.get("entropy"), b.get("entropy")
    return ea is not None and eb is not None and abs(float(ea) - float(eb)) < 1e-9


def _pick(rows: dict[str, dict], patterns: list[str]) -> list[dict]:
    return [r for label, r in rows.items() if any(fnmatch.fnmatch(label, p) for p in patterns)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="results.json files from tsdfm evaluate")
    ap.add_argument("--reference", nargs="+", required=True, help="label globs of the curve")
    ap.add_argument("--rows", nargs="+", required=True, help="label globs of the rows to place")
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    ap.add_argument(
        "--by-arm",
        action="store_true",
        help="add a table of arms (rows grouped over their -sN seeds): each evaluator's median "
        "gap, its range over the seeds and whether every seed lies below / above the curve",
    )
    args = ap.parse_args(argv)

    rows, evaluators = _load(args.results)
    reference = _pick(rows, args.reference)
    targets = [r for r in _pick(rows, args.rows) if r not in reference]
    if len(reference) < 2 or not targets:
        raise SystemExit(
            f"need >= 2 reference rows and >= 1 row to place; got {len(reference)} and "
            f"{len(targets)} (labels: {', '.join(sorted(rows))})"
        )
    curve = ", ".join(
        f"{r['label']} ({r['entropy']:.3f})" for r in sorted(reference, key=lambda r: r["entropy"])
    )
    lines = [
        f"Reference curve: {curve}. Gap = row gen-PPL / reference gen-PPL at the row's entropy - 1 "
        "(log-linear between the bracketing reference points; – outside the curve).",
        "",
        "| row | entropy | " + " | ".join(f"{e}: row / reference / gap" for e in evaluators) + " |",
        "|---|---|" + "---|" * len(evaluators),
    ]
    gaps = equal_entropy_gaps(reference, targets, evaluators)
    for g in gaps:
        cells = []
        for e in evaluators:
            v = g["evaluators"].get(e)
            if v is None or v["reference"] is None:
                cells.append("–" if v is None else f"{v['gen_ppl']:,.0f} / – / –")
            else:
                cells.append(f"{v['gen_ppl']:,.0f} / {v['reference']:,.0f} / {v['gap']:+.1%}")
        lines.append(f"| {g['label']} | {g['entropy']:.3f} | " + " | ".join(cells) + " |")
    if args.by_arm:
        lines += ["", *_arm_table(gaps, evaluators)]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


_OFF = {-1: "dominates", 1: "dominated", 0: "unplaced"}  # a seed off the curve's entropy range


def _arm_table(gaps: list[dict], evaluators: list[str]) -> list[str]:
    """Per arm and evaluator: median gap (min..max over seeds) and the verdict. A seed off the
    curve's entropy range has no gap; it counts for the verdict only where it dominates or is
    dominated (studylib.frontier.side_of_curve)."""
    lines = [
        "Per arm over its seeds: median gap (min..max); below / above = every seed better / "
        "worse than the reference at equal entropy (beyond the seed spread), mixed = the seeds "
        "disagree, not placed = a seed off the curve's entropy range that neither dominates "
        "(more entropy and lower gen-PPL than its most diverse point) nor is dominated.",
        "",
        "| arm | seeds | entropy | " + " | ".join(evaluators) + " |",
        "|---|---|---|" + "---|" * len(evaluators),
    ]
    verdicts = arm_verdicts(gaps, evaluators)
    for a in verdicts:
        cells = []
        for e in evaluators:
            v = a["evaluators"].get(e)
            if v is None:
                cells.append("–")
                continue
            placed = [g for g in v["gaps"] if g is not None]
            off = [_OFF[s] for g, s in zip(v["gaps"], v["sides"], strict=True) if g is None]
            parts = []
            if placed:
                parts.append(
                    f"{statistics.median(placed):+.1%} ({min(placed):+.1%}..{max(placed):+.1%})"
                )
            if off:
                parts.append(
                    "off the curve: "
                    + ", ".join(f"{off.count(w)} {w}" for w in _OFF.values() if w in off)
                )
            cells.append(", ".join(parts) + f" · {v['verdict']}")
        h = a["entropy"]
        lines.append(
            f"| {a['arm']} | {a['seeds']} | {min(h):.3f}..{max(h):.3f} | "
            + " | ".join(cells)
            + " |"
        )
    winners = [a["arm"] for a in verdicts if a["below_all"]]
    lines += [
        "",
        "Below the reference under every evaluator, in every seed: "
        + (", ".join(winners) if winners else "none")
        + ".",
    ]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
