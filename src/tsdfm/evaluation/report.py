"""``results.json`` (the contract of DESIGN.md section 8) and the markdown table beside it.

Top-level keys are exactly ``config, created, versions, evaluators, rows``; every row carries
the section-8 keys (plus additions such as ``entropy_std``, ``distinct_3``, ``label``, and for
``markov`` data ``truth_nll``, ``entropy_rate``, ``ngram_tv``). Non-finite numbers become
``null`` so the file stays valid JSON. The ``data`` row never names a samples file: real text
stays out of anything that may be committed.

The table shows entropy right beside the perplexities: a low gen-PPL at an entropy well below
the data's is mode collapse, not quality (DESIGN.md section 5).
"""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any

from tsdfm import __version__
from tsdfm.artifacts import atomic_write_json, atomic_write_text, now_iso

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


def build_results(config: str, evaluators: list[str], rows: list[dict[str, Any]]) -> dict:
    """The section-8 document; row keys in contract order, extras after."""
    ordered = []
    for row in rows:
        out = {k: row.get(k) for k in ROW_KEYS}
        out.update({k: v for k, v in row.items() if k not in out})
        ordered.append(out)
    results = {
        "config": config,
        "created": now_iso(),
        "versions": versions(),
        "evaluators": list(evaluators),
        "rows": ordered,
    }
    return _clean(results)


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
    head += ["NFE nominal / actual", "ms / sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.get("label") or r["method"],
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
        cells += [nfe, _fmt(ms, 2)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(results: dict[str, Any], plot_files: list[str] | None = None) -> str:
    v = results["versions"]
    parts = [
        f"# Evaluation: {results['config']}",
        "",
        f"Created {results['created']} with tsdfm {v.get('tsdfm')}, torch {v.get('torch')}. "
        "gen-PPL is pooled (exp of total NLL over total evaluator tokens); entropy is the "
        "per-sample unigram entropy in nats (mean and std); compare both with the data row.",
        "",
        markdown_table(results),
    ]
    for p in plot_files or []:
        parts.append(f"![{Path(p).stem}]({p})")
    return "\n".join(parts) + "\n"


def write_report(out_dir: Path, results: dict[str, Any], plots: bool = True) -> Path:
    """``results.json``, ``report.md`` and (optionally) ``plots/*.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_files: list[str] = []
    if plots:
        from tsdfm.evaluation.plots import write_plots

        plot_files = [p.relative_to(out_dir).as_posix() for p in write_plots(results, out_dir)]
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "report.md", render_markdown(results, plot_files))
    return out_dir / "results.json"
