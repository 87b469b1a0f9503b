"""The two figures of DESIGN.md section 5, one subplot per evaluator (matplotlib, Agg).

* ``gen_ppl_vs_steps.png``: gen-PPL against sampling steps on a log-2 axis, one line per method
  (and source / K), the real-text value as a dashed horizontal line and the word-salad value
  (same words, shuffled) as a dotted one. Few-step quality loss shows as the line rising to the
  left; a line near the dotted one has learned little beyond word frequencies.
* ``frontier.png``: gen-PPL against sample entropy. Lower-left of the data point is only a win
  if entropy did not fall: a sampler that collapses moves left *and* down.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tsdfm.evaluation.labels import temperature_tag, without_seed


def _series_key(row: dict[str, Any]) -> str:
    """One line per arm (a study's arm label without its seed), else per method / source / K."""
    arm = row.get("arm")
    if arm:
        return without_seed(arm) + temperature_tag(row)
    key = row["method"]
    if row.get("source"):
        key += f" ({row['source']})"
    if row.get("candidates") and row["candidates"] != 1:
        key += f" K={row['candidates']}"
    return key + temperature_tag(row)


def _axes(n: int, plt):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    flat = axes.ravel().tolist()
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evs = results["evaluators"]
    rows = results["rows"]
    if not evs or not rows:
        return []
    plot_dir = Path(out_dir) / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    data = next((r for r in rows if r["method"] == "data"), None)
    salad = next((r for r in rows if r["method"] == "salad"), None)
    models = [r for r in rows if r["method"] not in ("data", "salad")]
    out = []

    fig, axes = _axes(len(evs), plt)
    for ax, ev in zip(axes, evs, strict=True):
        series: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in models:
            ppl = (r.get("gen_ppl") or {}).get(ev)
            if r.get("steps") and ppl is not None:
                series[_series_key(r)].append((r["steps"], ppl))
        for label, pts in sorted(series.items()):
            # several seeds of one arm: the line joins their geometric mean, dots show each seed
            by_steps: dict[int, list[float]] = defaultdict(list)
            for steps, ppl in pts:
                by_steps[steps].append(ppl)
            xs = sorted(by_steps)
            ys = [float(np.exp(np.mean(np.log(by_steps[x])))) for x in xs]
            (line,) = ax.plot(xs, ys, marker="o", label=label)
            if any(len(v) > 1 for v in by_steps.values()):
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, color=line.get_color())
        if data is not None and (data.get("gen_ppl") or {}).get(ev) is not None:
            ax.axhline(data["gen_ppl"][ev], color="k", ls="--", lw=1, label="data")
        if salad is not None and (salad.get("gen_ppl") or {}).get(ev) is not None:
            ax.axhline(salad["gen_ppl"][ev], color="0.4", ls=":", lw=1, label="word salad")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(f"gen-PPL ({ev})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = plot_dir / "gen_ppl_vs_steps.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)

    fig, axes = _axes(len(evs), plt)
    for ax, ev in zip(axes, evs, strict=True):
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in models:
            if (r.get("gen_ppl") or {}).get(ev) is not None and r.get("entropy") is not None:
                groups[_series_key(r)].append(r)
        for label, rs in sorted(groups.items()):
            ax.scatter([r["entropy"] for r in rs], [r["gen_ppl"][ev] for r in rs], label=label)
            for r in rs:
                if r.get("steps"):
                    ax.annotate(str(r["steps"]), (r["entropy"], r["gen_ppl"][ev]), fontsize=6)
        if data is not None and (data.get("gen_ppl") or {}).get(ev) is not None:
            ax.scatter(
                [data["entropy"]], [data["gen_ppl"][ev]], marker="*", s=160, c="k", label="data"
            )
        if salad is not None and (salad.get("gen_ppl") or {}).get(ev) is not None:
            ax.scatter(
                [salad["entropy"]],
                [salad["gen_ppl"][ev]],
                marker="X",
                s=90,
                c="0.4",
                label="word salad",
            )
        ax.set_yscale("log")
        ax.set_xlabel("sample entropy (nats)")
        ax.set_ylabel(f"gen-PPL ({ev})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = plot_dir / "frontier.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    return out
