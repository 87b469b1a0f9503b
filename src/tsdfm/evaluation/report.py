"""``results.json`` (the contract of DESIGN.md section 8) and the markdown table beside it.

Top-level keys are ``config, created, versions, evaluators, rows`` (plus ``run_config``, the
resolved experiment config, when the pipeline wrote it); every row carries the section-8 keys
(plus additions such as ``entropy_std``, ``distinct_3``, ``label``, ``sec_per_sample_cached``,
``speedup``, and for ``markov`` data ``truth_nll``, ``entropy_rate``, ``ngram_tv``).

Speed: a teacher row sampled with forward caching reports the *uncached* sampler's time as
``sec_per_sample`` and the cached one as ``sec_per_sample_cached``; ``speedup`` is the
reference teacher's (most steps) uncached time over the row's time, ``speedup_cached`` the same
against its cached time: the student must beat both to matter. Non-finite numbers become
``null`` so the file stays valid JSON. The ``data`` row never names a samples file: real text
stays out of anything that may be committed.

The table shows entropy right beside the perplexities: a low gen-PPL at an entropy well below
the data's is mode collapse, not quality (DESIGN.md section 5).
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

from tsdfm import __version__
from tsdfm.artifacts import atomic_write_json, atomic_write_text, now_iso
from tsdfm.errors import TsdfmError
from tsdfm.evaluation.labels import temperature_tag

ROW_KEYS = (
    "method",
    "source",
    "steps",
    "candidates",
    "compass",
    "num_samples",
    "seq_len",
    "gen_ppl",
    "entropy",
    "distinct_2",
    "nfe_nominal",
    "nfe_actual",
    "sec_per_sample",
    "samples",
)
TRUTH_KEYS = ("truth_nll", "entropy_rate", "ngram_tv")
TOP_KEYS = ("config", "created", "versions", "evaluators", "rows")


def versions() -> dict[str, str]:
    import numpy
    import torch

    out = {"tsdfm": __version__, "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    out["python"] = platform.python_version()
    return out


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_results(
    config: str,
    evaluators: list[str],
    rows: list[dict[str, Any]],
    run_config: dict[str, Any] | None = None,
) -> dict:
    """The section-8 document; row keys in contract order, extras after."""
    ordered = []
    for row in rows:
        out = {k: row.get(k) for k in ROW_KEYS}
        out.update({k: v for k, v in row.items() if k not in out})
        ordered.append(out)
    _add_speedups(ordered)
    results = {
        "config": config,
        "created": now_iso(),
        "versions": versions(),
        "evaluators": list(evaluators),
        "rows": ordered,
    }
    if run_config is not None:
        results["run_config"] = run_config
    return _clean(results)


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup`` (vs the uncached reference teacher) and ``speedup_cached`` on every timed row."""
    teachers = [r for r in rows if r.get("method") == "teacher" and r.get("sec_per_sample")]
    if not teachers:
        return
    ref = max(teachers, key=lambda r: r.get("steps") or 0)
    plain = ref["sec_per_sample"]
    cached = ref.get("sec_per_sample_cached") or plain
    for r in rows:
        sec = r.get("sec_per_sample")
        r["speedup"] = plain / sec if sec else None
        r["speedup_cached"] = cached / sec if sec else None


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e5 else f"{v:.3g}"
    return str(v)


def markdown_table(results: dict[str, Any]) -> str:
    evs = results["evaluators"]
    rows = results["rows"]
    truth = any("truth_nll" in r for r in rows)
    head = ["row", "method", "source", "steps", "K", "compass", "N"]
    head += [f"gen-PPL {e}" for e in evs] + ["entropy (std)", "distinct-2", "distinct-3"]
    if truth:
        head += ["truth-NLL", "H", "n-gram TV"]
    ref = max(
        (r for r in rows if r["method"] == "teacher" and r.get("sec_per_sample")),
        key=lambda r: r.get("steps") or 0,
        default=None,
    )
    vs = f"teacher@{ref['steps']}" if ref else "teacher"
    head += ["NFE nominal / actual", "ms / sample", "ms cached", f"speed-up vs {vs} (cached)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            (r.get("label") or r["method"]) + temperature_tag(r),
            r["method"],
            _fmt(r["source"]),
            _fmt(r["steps"]),
            _fmt(r["candidates"]),
            _fmt(r["compass"]),
            _fmt(r["num_samples"]),
        ]
        cells += [_fmt((r.get("gen_ppl") or {}).get(e), 2) for e in evs]
        cells += [
            f"{_fmt(r['entropy'])} ({_fmt(r.get('entropy_std'))})",
            _fmt(r["distinct_2"]),
            _fmt(r.get("distinct_3")),
        ]
        if truth:
            order = r.get("ngram_order")
            tv = (r.get("ngram_tv") or {}).get(str(order)) if order else None
            cells += [_fmt(r.get("truth_nll"), 4), _fmt(r.get("entropy_rate"), 4), _fmt(tv, 4)]
        nfe = (
            "–" if r["nfe_nominal"] is None else f"{r['nfe_nominal']} / {_fmt(r['nfe_actual'], 0)}"
        )
        ms = None if r["sec_per_sample"] is None else 1000 * r["sec_per_sample"]
        cached = r.get("sec_per_sample_cached")
        up, up_c = r.get("speedup"), r.get("speedup_cached")
        cells += [
            nfe,
            _fmt(ms, 2),
            _fmt(None if cached is None else 1000 * cached, 2),
            "–" if up is None else f"{up:.1f}x ({up_c:.1f}x)",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(
    results: dict[str, Any],
    plot_files: list[str] | None = None,
    out_dir: Path | None = None,
    samples_per_row: int = 3,
) -> str:
    """The report a person reads top-down: the same-seed samples of the headline rows side by
    side, the metric table (entropy beside every gen-PPL), the gen-PPL-vs-steps plot, one
    sentence on what the run's budget can show; then every row's samples, versions, config."""
    v = results["versions"]
    plot_files = list(plot_files or [])
    steps_plot = [p for p in plot_files if Path(p).stem == "gen_ppl_vs_steps"]
    parts = [f"# Evaluation: {results['config']}", ""]
    if out_dir is not None and samples_per_row > 0:
        parts += side_by_side(results, Path(out_dir), samples_per_row)
    parts += [
        "## Metrics",
        "",
        f"Created {results['created']} with tsdfm {v.get('tsdfm')}, torch {v.get('torch')}. "
        "gen-PPL is pooled (exp of total NLL over total evaluator tokens); entropy is the "
        "per-sample unigram entropy in nats (mean and std); compare both with the data row. "
        "ms / sample is the plain sampler's time (for a cached teacher row: measured on a "
        "window of uncached steps and scaled, see `tsdfm.evaluation.timing`); 'ms cached' is "
        "the forward-cached time the samples were drawn with.",
        "",
        markdown_table(results),
    ]
    for p in steps_plot + [p for p in plot_files if p not in steps_plot]:
        parts.append(f"![{Path(p).stem}]({p})")
    note = budget_note(results)
    if note:
        parts += ["", note]
    if out_dir is not None and samples_per_row > 0:
        parts += ["", "## Samples", ""] + _sample_lines(results, Path(out_dir), samples_per_row)
    parts += ["", "## Versions", "", "```json", json.dumps(v, indent=1), "```"]
    if results.get("run_config"):
        parts += ["", "## Config", "", "```json", json.dumps(results["run_config"], indent=1)]
        parts += ["```"]
    return "\n".join(parts) + "\n"


def _untempered(row: dict[str, Any]) -> bool:
    return temperature_tag(row) == ""


def headline_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a reader compares first, whichever exist: the teacher at its most steps, then
    the blind and the shaped student at 8 steps (the first of each, at temperature 1)."""
    rows = [r for r in results["rows"] if r.get("samples") and _untempered(r)]
    teachers = [r for r in rows if r.get("method") == "teacher"]
    picked = [max(teachers, key=lambda r: r.get("steps") or 0)] if teachers else []
    for method in ("blind", "shaped"):
        picked += [r for r in rows if r.get("method") == method and r.get("steps") == 8][:1]
    return picked


def _cell(text: str, width: int) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("|", "\\|")


def side_by_side(results: dict[str, Any], out_dir: Path, n: int = 3, width: int = 200) -> list[str]:
    """Sample i of each headline row in one table line: every row is drawn with the same
    sampling seed, so a line compares the models, not the luck of the draw."""
    from tsdfm.sample_files import first_texts

    columns = []
    for r in headline_rows(results):
        path = out_dir / r["samples"]
        try:
            texts = first_texts(path, n)
        except TsdfmError:
            continue  # a published folder may keep only the rows its claims cite
        columns.append((r.get("label") or f"{r['method']} @ {r.get('steps')}", texts))
    if not columns:
        return []
    lines = [
        "## Samples side by side",
        "",
        "The first samples of each headline row; every row is drawn with the same sampling seed.",
        "",
        "| # | " + " | ".join(name for name, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for i in range(max(len(t) for _, t in columns)):
        cells = [_cell(t[i], width) if i < len(t) else "–" for _, t in columns]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return lines + [""]


def budget_note(results: dict[str, Any]) -> str | None:
    """One sentence on what the run's budget can and cannot show (pipeline runs only)."""
    cfg = results.get("run_config") or {}
    teacher = ((cfg.get("teacher") or {}).get("train") or {}).get("steps")
    student = ((cfg.get("student") or {}).get("train") or {}).get("steps")
    if teacher is None or student is None:
        return None
    n = (cfg.get("evaluation") or {}).get("num_samples")
    return (
        f"**What this budget can show:** with a teacher of at most {teacher:,} training steps, "
        f"students of {student:,} steps and {n or 'these'} samples per row, this report shows "
        "that every stage runs and how the rows of this run compare (speed is measured, not "
        "estimated); it cannot show whether distillation or shaping works until the teacher "
        "beats the word-salad row, which takes the budgets of the studies in the repository's "
        "`docs/findings.md`."
    )


def _sample_lines(results: dict[str, Any], out_dir: Path, n: int, width: int = 240) -> list[str]:
    """The first ``n`` samples of each row (real text never: the data row names no file)."""
    from tsdfm.sample_files import first_texts, resolve_samples

    lines = []
    for r in results["rows"]:
        rel = r.get("samples")
        path = resolve_samples(out_dir / rel) if rel else None
        if path is None or not path.is_file():
            continue
        lines.append(f"**{r.get('label') or r['method']}**")
        lines.append("")
        lines += ["- " + _cell(text, width) for text in first_texts(path, n)]
        lines.append("")
    return lines


def write_report(out_dir: Path, results: dict[str, Any], plots: bool = True) -> Path:
    """``results.json``, ``report.md`` and (optionally) ``plots/*.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_files: list[str] = []
    if plots:
        from tsdfm.evaluation.plots import write_plots

        plot_files = [p.relative_to(out_dir).as_posix() for p in write_plots(results, out_dir)]
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "report.md", render_markdown(results, plot_files, out_dir))
    return out_dir / "results.json"
