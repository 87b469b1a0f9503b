"""Reproducible student study: train students per arm and seed, sample, evaluate, tabulate.

Usage (the exact benchmark)::

    # blind students, both target spaces (issue 4)
    python studies/student_study.py --config configs/markov.yaml --run-dir runs/markov \\
        --spaces probs logits --seeds 0 1 --out docs/results/markov-student
    # shaping arms (issue 5): NAME=override;override..., navigated when shaping is set
    python studies/student_study.py --config configs/markov.yaml --run-dir runs/markov \\
        --arm "blind=student.target_space=probs" \\
        --arm "oracle-k4=student.shaping.compass=oracle;student.shaping.candidates=4" \\
        --seeds 0 1 2 --out docs/results/markov-shaping

    # several workers on disjoint arms/seeds (--no-eval), then one evaluation of everything
    python studies/student_study.py --config configs/markov.yaml --run-dir runs/markov \\
        --out docs/results/markov-shaping --eval-only
    # equal-temperature comparison: every row also sampled sharpened (rows "blind T=0.85", ...)
    python studies/student_study.py --config configs/markov.yaml --run-dir runs/markov \\
        --arm "blind=student.target_space=probs" --seeds 0 1 2 --teacher-steps 8 \\
        --student-steps 8 --temperatures 0.85 0.9 --out docs/results/markov-shaping/temperature
    # compasses of several sizes (issue 36): each shaped arm with its own learned compass
    python studies/student_study.py --config configs/bench.yaml --run-dir runs/bench-longer \
        --arm "c-small=student.shaping.compass=ar;student.shaping.candidates=4" \
        --compass c-small=runs/bench-longer/compass-small --seeds 0 1 2 --out DIR
    # tabulate another evaluation of the same samples (`tsdfm evaluate --evaluators smollm2-135m`)
    python studies/student_study.py --summarise docs/results/STUDY/smollm2/results.json

Each arm and seed is trained into ``<run-dir>/student-<arm>-s<seed>`` (skipped when complete,
resumed when interrupted); ``--spaces X`` is shorthand for ``--arm X=student.target_space=X``.
An arm whose overrides mention ``student.shaping`` is navigated (also with K = 1). The teacher is sampled at ``--teacher-steps`` and every
student at ``--student-steps`` with the same number of samples and sampling seed; all files are
evaluated in one run (truth metrics on markov; gen-PPL with ``--evaluators`` on text) into
``--out`` (results.json + report.md + plots), plus ``study.md``: mean and spread over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np

from tsdfm.artifacts import publish_text
from tsdfm.config import load_config
from tsdfm.errors import TsdfmError
from tsdfm.evaluation.labels import temperature_tag
from tsdfm.generation import draw_samples, meta_path, write_samples
from tsdfm.sample_files import is_samples_file, resolve_samples, samples_stem
from tsdfm.training.student import shaping_setup, train_student


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config")
    ap.add_argument("--run-dir", help="holds data/ and teacher/ (from `tsdfm pipeline`)")
    ap.add_argument("--spaces", nargs="*", default=[])
    ap.add_argument("--arm", action="append", default=[], help="NAME=key=value;key=value")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--student-steps", nargs="+", type=int, default=[8, 4, 2, 1])
    ap.add_argument("--teacher-steps", nargs="*", type=int, default=[1024, 8, 4, 2, 1])
    ap.add_argument("--num", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--sample-seed", type=int, default=4321)
    ap.add_argument(
        "--temperatures",
        nargs="+",
        type=float,
        default=[1.0],
        help="sampling temperatures for every teacher and student row (default 1); rows at "
        "T != 1 are written as NAME-T<T>_<steps>.jsonl and tabulated as their own arm",
    )
    ap.add_argument(
        "--compass",
        action="append",
        default=[],
        metavar="ARM=DIR",
        help="the learned compass (causal LM run or model dir) of one shaped arm, repeatable; "
        "arms without one use RUN_DIR/compass",
    )
    ap.add_argument("--evaluators", nargs="*", default=None)
    ap.add_argument(
        "--eval-only",
        action="store_true",
        help="no training or sampling: evaluate every samples file under OUT/samples",
    )
    ap.add_argument(
        "--keep-rows",
        action="store_true",
        help="with --eval-only: keep the rows of OUT/results.json that have no samples file now "
        "(dropped after an earlier evaluation, scripts/compact_samples.py) beside the rows "
        "evaluated afresh, so new runs join a published study without re-drawing every row",
    )
    ap.add_argument(
        "--no-plots",
        action="store_true",
        help="write report.md without plots/ (and without links to them): for a study folder "
        "under docs/, where plots are not committed",
    )
    ap.add_argument(
        "--summarise",
        metavar="RESULTS_JSON",
        help="only tabulate a results.json written by `tsdfm evaluate` (e.g. extra evaluators) "
        "into study.md beside it",
    )
    ap.add_argument("--baseline", default="blind", help="arm the comparisons are made against")
    ap.add_argument("--out")
    ap.add_argument(
        "--no-eval",
        action="store_true",
        help="train and sample only (run several workers on disjoint arms/seeds, then evaluate once)",
    )
    ap.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars for training and sampling (default: when stderr is a terminal)",
    )
    ap.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = ap.parse_args()
    if args.summarise:
        path = Path(args.summarise)
        if not path.is_file():
            ap.error(f"results file not found: {path}")
        _write_study(path.parent, summarise(json.loads(path.read_text()), args.baseline))
        return
    missing = [
        f"--{a.replace('_', '-')}" for a in ("config", "run_dir", "out") if not getattr(args, a)
    ]
    if missing:
        ap.error(f"the following arguments are required: {', '.join(missing)}")

    run, out = Path(args.run_dir), Path(args.out)
    compasses = _compasses(args.compass, [spec.partition("=")[0] for spec in args.arm], ap)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    cfg = load_config(args.config, args.overrides)
    teacher = run / "teacher" / "model"
    files = []
    kw = dict(num=args.num, seed=args.sample_seed, batch_size=args.batch_size, progress=progress)

    def sample_once(model_dir: Path, steps: int, name: str) -> None:
        """Draw at every temperature unless a file with the same provenance (model, steps, N,
        seed, temperature) exists."""
        for temp in args.temperatures:
            tag = "" if temp == 1.0 else f"-T{temp:g}"
            path = resolve_samples(out / "samples" / f"{name}{tag}_{steps}.jsonl")
            if path.is_file() and meta_path(path).is_file():
                meta = json.loads(meta_path(path).read_text())
                have = [meta.get(k) for k in ("model", "num_samples", "seed", "steps")]
                have.append((meta.get("sampler") or {}).get("temperature", 1.0))
                if have == [str(model_dir), args.num, args.sample_seed, steps, temp]:
                    files.append(path)
                    continue
            draw = draw_samples(model_dir, steps=steps, temperature=temp, **kw)
            files.append(write_samples(path, draw))

    if args.keep_rows and not args.eval_only:
        ap.error("--keep-rows is an option of --eval-only")
    kept = _kept_rows(out / "results.json", args.evaluators) if args.keep_rows else []
    if args.eval_only:  # arms trained with different seed sets: evaluate what is there
        files = sorted(filter(is_samples_file, (out / "samples").iterdir()), key=_row_order)
        args.teacher_steps, args.spaces, args.arm = [], [], []
    for steps in args.teacher_steps:
        sample_once(teacher, steps, "teacher")
    arms = [(sp, [f"student.target_space={sp}"]) for sp in args.spaces]
    for spec in args.arm:
        name, _, rest = spec.partition("=")
        arms.append((name, [o for o in rest.split(";") if o]))
    for arm_name, arm_overrides in arms:
        arm = load_config(args.config, args.overrides + arm_overrides)
        navigate = any(o.startswith("student.shaping") for o in arm_overrides)
        for seed in args.seeds:
            name = f"student-{arm_name}-s{seed}"
            arm_seed = dataclasses.replace(
                arm,
                student=dataclasses.replace(
                    arm.student, train=dataclasses.replace(arm.student.train, seed=seed)
                ),
            )
            sdir = run / name
            if not (sdir / "summary.json").is_file():
                jump_fn, method, extra, _ = shaping_setup(
                    arm_seed, teacher, run / "data", navigate, compass_dir=compasses.get(arm_name)
                )
                train_student(
                    arm_seed,
                    teacher,
                    run / "data",
                    sdir,
                    resume=(sdir / "checkpoints").exists(),
                    progress=progress,
                    jump_fn=jump_fn,
                    method=method,
                    extra={**(extra or {}), "label": f"{arm_name} s{seed}"},
                )
            for steps in args.student_steps:
                sample_once(sdir / "model", steps, name)

    if args.no_eval:
        return
    from tsdfm.data import load_prepared
    from tsdfm.evaluation.harness import evaluate
    from tsdfm.evaluation.registry import build_evaluators, default_specs

    data = load_prepared(run / "data")
    specs = args.evaluators or default_specs(run / "data", data.chain() is not None)
    evaluators = build_evaluators(specs, data)
    results = evaluate(
        files, evaluators, run / "data", out_dir=out, config_name=cfg.name, verbose=False,
        plots=not args.no_plots,
    )  # fmt: skip
    if kept:
        results = _merge_rows(out, results, kept, plots=not args.no_plots)
    _write_study(out, summarise(results, args.baseline))


def _compasses(specs: list[str], arms: list[str], ap: argparse.ArgumentParser) -> dict:
    """``--compass ARM=DIR`` pairs as ``{arm: Path}``, each naming an ``--arm`` and a directory."""
    out = {}
    for spec in specs:
        arm, _, directory = spec.partition("=")
        if arm not in arms or not directory:
            ap.error(f"--compass {spec!r}: expected ARM=DIR with ARM one of --arm ({arms})")
        if not Path(directory).is_dir():
            ap.error(
                f"--compass {spec!r}: no directory {directory} (train it with `tsdfm train causal --role compass`)"
            )
        out[arm] = Path(directory)
    return out


def _kept_rows(path: Path, evaluators: list[str] | None) -> list[dict]:
    """The evaluated rows of a published ``results.json`` whose samples are gone (the
    reference rows are measured again with every evaluation). Refused when ``--evaluators``
    names others than those the rows were scored by: a merged table must be one protocol."""
    if not path.is_file():
        raise SystemExit(f"error: --keep-rows: no {path} to keep rows from")
    published = json.loads(path.read_text())
    if evaluators is not None and sorted(evaluators) != sorted(published["evaluators"]):
        raise SystemExit(
            f"error: --keep-rows: {path} was scored by {published['evaluators']}, not "
            f"{evaluators}; evaluate with the same --evaluators or re-draw every row"
        )
    return [r for r in published["rows"] if r.get("samples_dropped") and not r.get("samples")]


def _merge_rows(out: Path, results: dict, kept: list[dict], plots: bool = True) -> dict:
    """``results`` plus the kept rows that were not evaluated again, in study order (reference
    rows first), rewritten with the report."""
    from tsdfm.evaluation.report import build_results, write_report

    fresh = {r.get("label") for r in results["rows"]}
    rows = [r for r in results["rows"] if not r.get("samples")]  # data / salad
    evaluated = [r for r in results["rows"] if r.get("samples")]
    evaluated += [r for r in kept if r.get("label") not in fresh]
    rows += sorted(evaluated, key=lambda r: _row_order(Path(f"{r['label']}.jsonl")))
    merged = build_results(results["config"], results["evaluators"], rows)
    write_report(out, merged, plots=plots)  # the plots too, or they would show the fresh rows only
    return merged


def _write_study(directory: Path, text: str) -> None:
    publish_text(directory / "study.md", text)


def _disjoint(a: list[float], b: list[float]) -> bool:
    """Two seed ranges that do not overlap: the gap between arms exceeds both spreads."""
    return max(a) < min(b) or min(a) > max(b)


def _row_order(path: Path) -> tuple:
    """Teacher first, then arms by name; within one, the most steps first."""
    name, _, steps = samples_stem(path).rpartition("_")
    return (not name.startswith("teacher"), name, -int(steps) if steps.isdigit() else 0)


def summarise(results: dict, baseline: str | None = "blind") -> str:
    """Mean and spread (min..max) over seeds for each (label without seed, steps); a row
    sampled at a temperature other than 1 is its own group (``blind T=0.9``)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results["rows"]:
        label = (r.get("arm") or r["method"]).split(" s")[0] + temperature_tag(r)
        groups.setdefault((label, r.get("steps")), []).append(r)
    columns = _summary_columns(results)
    lines = [
        "| arm | steps | seeds | " + " | ".join(h for h, _ in columns) + " |",
        "|---" * (3 + len(columns)) + "|",
    ]
    for (label, steps), rows in groups.items():
        cells = [label, "–" if steps is None else str(steps), str(len(rows))]
        for _, get in columns:
            vals = [v for v in (get(r) for r in rows) if v is not None]
            if not vals:
                cells.append("–")
                continue
            m, digits = float(np.mean(vals)), (4 if abs(np.mean(vals)) < 100 else 1)
            spread = f" ({min(vals):.{digits}f}..{max(vals):.{digits}f})" if len(vals) > 1 else ""
            cells.append(f"{m:.{digits}f}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    floor = next((r for r in results["rows"] if r["method"] == "data"), None)
    if floor is not None and "ngram_tv" in floor:
        lines.append(f"\nFloor (true chain samples, same N): TV {json.dumps(floor['ngram_tv'])}")
        lines += excess_tv_table(groups, floor, baseline)
    elif baseline and results.get("evaluators"):
        lines += gen_ppl_change_table(groups, baseline, results["evaluators"])
    return "\n".join(lines) + "\n"


def _summary_columns(results: dict) -> list[tuple[str, object]]:
    """Truth metrics and n-gram TV on markov; gen-PPL per evaluator on text; entropy always."""
    if "truth_nll" in results["rows"][0]:
        return [
            ("truth_nll", lambda r: r.get("truth_nll")),
            ("entropy", lambda r: r.get("entropy")),
            ("2-gram TV", lambda r: r.get("ngram_tv", {}).get("2")),
            ("3-gram TV", lambda r: r.get("ngram_tv", {}).get("3")),
        ]
    cols = [
        (f"gen-PPL {name}", lambda r, name=name: r.get("gen_ppl", {}).get(name))
        for name in results.get("evaluators", [])
    ]
    return cols + [("entropy", lambda r: r.get("entropy"))]


_T_TAG = r" T=[0-9.]+$"  # the tag temperature_tag() appends to a row sampled at T != 1


def excess_tv_table(groups: dict, floor: dict, baseline: str | None) -> list[str]:
    """Issue 5's criterion: the k+1-gram TV above the floor (TV of as many true chain samples),
    each arm's ratio to the baseline arm's at the same steps, whether the gap between the two
    arms exceeds both arms' seed spread, and truth-NLL relative to the data's (below -5% would
    be mode-seeking)."""
    order = str(floor.get("ngram_order") or 2)
    tv_floor, nll_data = floor["ngram_tv"][order], floor.get("truth_nll")
    tempered = any(re.search(_T_TAG, label) for label, _ in groups)
    lines = [
        "",
        f"Excess {order}-gram TV over the floor ({tv_floor:.4f}); ratio to `{baseline}` at the "
        "same steps; 'separated' = the arms' seed ranges do not overlap; truth-NLL vs data's "
        f"({nll_data:.4f})."
        + (
            f" 'at equal T': ratio to `{baseline}` sampled at the same temperature."
            if tempered
            else ""
        ),
        "",
        "| arm | steps | seeds | excess TV mean (min..max) | ratio to baseline | separated "
        + ("| at equal T " if tempered else "")
        + "| truth-NLL vs data |",
        "|---" * (8 if tempered else 7) + "|",
    ]

    def excess(rows):
        return [r["ngram_tv"][order] - tv_floor for r in rows if r.get("ngram_tv")]

    for (label, steps), rows in groups.items():
        if label == "data":
            continue
        ex = excess(rows)
        if not ex:
            continue
        base = excess(groups.get((baseline, steps), [])) if baseline else []
        ratio, separated = "–", "–"
        if base and label != baseline:
            ratio = f"{np.mean(ex) / np.mean(base):.3f}"
            separated = "yes" if _disjoint(ex, base) else "no"
        nll = [r["truth_nll"] for r in rows if r.get("truth_nll") is not None]
        rel = f"{100 * (np.mean(nll) / nll_data - 1):+.1f}%" if nll and nll_data else "–"
        spread = f" ({min(ex):.4f}..{max(ex):.4f})" if len(ex) > 1 else ""
        same_t = ""
        if tempered:
            tag = re.search(_T_TAG, label)
            peer_label = f"{baseline}{tag.group(0) if tag else ''}"
            peer = excess(groups.get((peer_label, steps), [])) if baseline else []
            same_t = "– | "
            if peer and label != peer_label:
                same_t = f"{np.mean(ex) / np.mean(peer):.3f} | "
        lines.append(
            f"| {label} | {steps} | {len(rows)} | {np.mean(ex):.4f}{spread} | {ratio} | "
            f"{separated} | {same_t}{rel} |"
        )
    return lines


def gen_ppl_change_table(groups: dict, baseline: str, evaluators: list[str]) -> list[str]:
    """Issue 5's text criterion: each arm's mean gen-PPL against the baseline arm's at the same
    steps and against the 1,024-step teacher, per evaluator, with entropy against the teacher's.
    'separated' says whether the two arms' seed ranges are disjoint under every evaluator that
    scored both (with one seed on either side it cannot be told: '–')."""
    teacher = groups.get(("teacher", 1024), [])
    lines = [
        "",
        f"Change in mean gen-PPL against `{baseline}` at the same steps and against the teacher "
        "at 1,024 steps (negative = better); 'separated' = seed ranges disjoint under every "
        "evaluator.",
        "",
        "| arm | steps | seeds | vs " + baseline + " (" + " / ".join(evaluators) + ") | separated "
        "| vs teacher @ 1,024 | entropy vs teacher @ 1,024 |",
        "|---|---|---|---|---|---|---|",
    ]

    def ppl(rows, name):
        return [r["gen_ppl"][name] for r in rows if r.get("gen_ppl", {}).get(name) is not None]

    def change(rows, ref, name):
        a, b = ppl(rows, name), ppl(ref, name)
        return f"{100 * (np.mean(a) / np.mean(b) - 1):+.1f}%" if a and b else "–"

    for (label, steps), rows in groups.items():
        if label in ("data", "teacher", baseline) or steps is None:
            continue
        base = groups.get((baseline, steps), [])
        verdicts = []
        for name in evaluators:
            a, b = ppl(rows, name), ppl(base, name)
            if len(a) > 1 and len(b) > 1:
                verdicts.append(_disjoint(a, b))
        separated = ("yes" if all(verdicts) else "no") if verdicts else "–"
        ent, t_ent = [r["entropy"] for r in rows], [r["entropy"] for r in teacher]
        ent_change = f"{100 * (np.mean(ent) / np.mean(t_ent) - 1):+.1f}%" if t_ent else "–"
        lines.append(
            f"| {label} | {steps} | {len(rows)} | "
            + " / ".join(change(rows, base, n) for n in evaluators)
            + f" | {separated} | "
            + " / ".join(change(rows, teacher, n) for n in evaluators)
            + f" | {ent_change} |"
        )
    return lines


if __name__ == "__main__":
    try:
        main()
    except TsdfmError as e:  # a bad input (missing file, wrong data): one clear line
        raise SystemExit(f"error: {e}") from e
