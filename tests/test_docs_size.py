"""The committed tree stops growing by megabytes per study (`make check-size`).

Rules (docs/results/README.md, "Storage"):

1. no raw ``.jsonl`` samples file under ``docs/``: committed samples are ``.jsonl.gz``
   (``scripts/publish_report.py`` writes them, ``scripts/compact_samples.py FOLDER`` converts);
2. every study folder stays within ``STUDY_BUDGET_MB``;
3. ``docs/`` as a whole stays within ``DOCS_BUDGET_MB`` (40 MB; 35.6 MB committed when every
   folder was converted), so a clone stays small and each study must choose the rows its claims
   cite.
"""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOCS_BUDGET_MB = 40
STUDY_BUDGET_MB = 12


def committed_files() -> list[Path]:
    """Files git tracks under docs/ (untracked regenerations do not count; a link counts as
    its own few bytes, as git stores it);
    every file under docs/ when this is not a git checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "docs"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        files = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:
        files = [Path(d) / f for d, _, names in os.walk(DOCS) for f in names]
    return [f for f in files if f.is_symlink() or f.is_file()]


def test_no_raw_samples_under_docs():
    raw = [f for f in committed_files() if f.name.endswith(".jsonl")]
    assert not raw, (
        f"{len(raw)} raw samples files under docs/ (first: {raw[0].relative_to(ROOT)}): run "
        "`python scripts/compact_samples.py FOLDER` (publish_report.py writes compact files)"
    )


def test_each_study_within_its_budget():
    sizes: dict[str, int] = {}
    for f in committed_files():
        rel = f.relative_to(DOCS).parts
        if len(rel) > 2 and rel[0] == "results":
            sizes[rel[1]] = sizes.get(rel[1], 0) + f.lstat().st_size
    over = {k: round(v / 1e6, 1) for k, v in sizes.items() if v > STUDY_BUDGET_MB * 1e6}
    assert not over, f"study folders over {STUDY_BUDGET_MB} MB (MB): {over}"


def test_docs_within_budget():
    total = sum(f.lstat().st_size for f in committed_files())
    assert total <= DOCS_BUDGET_MB * 1e6, (
        f"docs/ holds {total / 1e6:.1f} MB, over its {DOCS_BUDGET_MB} MB budget: compact samples "
        "(scripts/compact_samples.py) and keep only the rows a claim cites"
    )
