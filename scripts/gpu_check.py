"""Helpers of scripts/gpu_check.sh: check the carried data before any GPU time is spent, and
gather everything the check measured into ``$OUT/results.json`` and ``$OUT/report.md``.

    python scripts/gpu_check.py data DIR        # overrides for the study, one per line; exit 2
                                                # with one line naming the fix if DIR is unusable
    python scripts/gpu_check.py report --out OUT --run RUN --budget-s S --device D

The report is written whatever happened: a stage that failed or ran out of time is listed
with its exit code (124: its time cap) and whatever it left behind is still tabulated.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

SMOKE_COLUMNS = (
    ("stage", "stage"),
    ("tokens_per_s", "tokens/s"),
    ("tokens_per_s_after_warmup", "steady tokens/s"),
    ("mfu", "MFU (bf16)"),
    ("achieved_TFLOPS", "TFLOPS"),
    ("peak_mem_GiB", "peak GiB"),
    ("seconds", "s"),
)
STUDY_STAGES = (
    "teacher",
    "compass",
    "evaluator-small",
    "evaluator-large",
    "ar",
    "student-blind",
    "student-shaped",
)


def data_overrides(directory: Path) -> list[str]:
    """``data.KEY=VALUE`` for the spec the data was prepared with (so the study's config
    matches the carried data exactly), plus the evaluators that can run offline."""
    from tsdfm.data import load_prepared
    from tsdfm.evaluation.fetch import SMOLLM2, gguf_path

    data = load_prepared(directory, verify=True)
    if data.spec.is_markov:
        raise SystemExit(
            f"error: {directory} holds markov data; the GPU check's study needs prepared text "
            "(e.g. tsdfm data prepare --config configs/gpu-check.yaml --out runs/gpu-data)"
        )
    spec = data.spec.to_dict()
    spec.pop("markov")
    out = [f"data.{key}={json.dumps(value)}" for key, value in spec.items()]
    evaluators = ["ar-small", "ar-large"]
    if gguf_path(SMOLLM2).is_file():  # never fetched here: the GPU machine has no network
        evaluators.append(SMOLLM2.name)
    out.append(f"evaluation.evaluators={json.dumps(evaluators)}")
    return out


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _shape(shape: dict) -> str:
    """``dim x layers, L, V``: the 170M shape is 768 x 12, L = 1024, V = 50259."""
    return f"{shape['dim']} x {shape['layers']}, L = {shape['seq_len']}, V = {shape['vocab']}"


def _smoke_value(row: dict, key: str):
    value = row.get(key)
    return f"{value:.1%}" if key == "mfu" and value is not None else value


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def report(out: Path, run: Path, budget_s: float, device: str) -> dict:
    stages = []
    tsv = out / "stages.tsv"
    if tsv.is_file():
        for line in tsv.read_text().splitlines():
            name, rc, seconds = line.split("\t")
            stages.append({"stage": name, "exit": int(rc), "seconds": int(seconds)})
    smoke = {kind: _read(out / f"smoke-{kind}" / "gpu_smoke.json") for kind in ("eager", "compile")}
    summaries = {}
    for name in STUDY_STAGES:
        s = _read(run / name / "summary.json")
        if s is not None:
            summaries[name] = {
                k: s.get(k)
                for k in (
                    "parameters",
                    "steps",
                    "train_seconds",
                    "tokens_per_second",
                    "final_val_loss",
                )
            }
    study_results = _read(run / "report" / "results.json")
    if (run / "report").is_dir():  # the study's own report, samples and plots travel back
        shutil.copytree(run / "report", out / "study", dirs_exist_ok=True)
    if (run / "samples").is_dir():
        shutil.copytree(run / "samples", out / "study" / "samples", dirs_exist_ok=True)
    gpu = next((s["device"] for s in smoke.values() if s), device)
    teacher_mfu = {
        kind: next((r.get("mfu") for r in s["rows"] if r["stage"] == "teacher"), None)
        for kind, s in smoke.items()
        if s
    }
    results = {
        "device": gpu,
        "budget_s": budget_s,
        "stages": stages,
        "ok": bool(stages) and all(s["exit"] == 0 for s in stages),
        "smoke": smoke,
        "teacher_mfu": teacher_mfu,
        "study_stages": summaries,
        "study_results": study_results,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    lines = [
        "# GPU check (`scripts/gpu_check.sh`)",
        "",
        f"Device: {gpu}. Budget {budget_s:.0f} s; stages (exit 124: cut at its time cap):",
        "",
        *_table(
            ["stage", "exit", "seconds"], [[s["stage"], s["exit"], s["seconds"]] for s in stages]
        ),
    ]
    for kind, s in smoke.items():
        if not s:
            continue
        lines += [
            "",
            f"## Smoke at the shape {_shape(s['shape'])}, {kind} (torch {s['torch']}, bf16 peak "
            f"{_cell(s.get('bf16_peak_TFLOPS'))} TFLOPS)",
            "",
            *_table(
                [c[1] for c in SMOKE_COLUMNS],
                [[_smoke_value(r, k) for k, _ in SMOKE_COLUMNS] for r in s["rows"]],
            ),
        ]
    lines += [
        "",
        "MFU: steady tokens/s x training FLOPs per token (scripts/gpu_smoke.py) / the dense "
        "bf16 peak; goal for the teacher with compile: at least 35%.",
        "",
        "## Study (configs/gpu-check.yaml on the carried data)",
        "",
        *_table(
            ["stage", "parameters", "steps", "train s", "tokens/s", "final val loss"],
            [[name, *s.values()] for name, s in summaries.items()],
        ),
    ]
    study_md = run / "report" / "report.md"
    if study_md.is_file():
        lines += ["", study_md.read_text(encoding="utf-8")]
    else:
        lines += ["", "No study report: see logs/ for the stage that failed."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data")
    d.add_argument("directory", type=Path)
    r = sub.add_parser("report")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--run", type=Path, required=True)
    r.add_argument("--budget-s", type=float, required=True)
    r.add_argument("--device", default="?")
    args = ap.parse_args()
    from tsdfm.errors import TsdfmError

    try:
        if args.command == "data":
            print("\n".join(data_overrides(args.directory)))
        else:
            results = report(args.out, args.run, args.budget_s, args.device)
            print(f"report: {args.out / 'report.md'} (all stages ok: {results['ok']})")
    except TsdfmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
