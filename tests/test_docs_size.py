"""The committed tree stops growing by megabytes per study (`make check-size`).

Rules (docs/results/README.md, "Storage"):

1. no raw ``.jsonl`` samples file under ``docs/`` outside the folders listed in
   ``RAW_LEGACY`` (committed before compaction, converted folder by folder with
   ``scripts/compact_samples.py``; the list may only shrink);
2. every other study folder stays within ``STUDY_BUDGET_MB``;
3. ``docs/`` as a whole stays within ``DOCS_BUDGET_MB``. The target once every legacy folder is
   converted is **40 MB**; until then the budget is the committed size (178.0 MB) plus 2 MB,
   so no study can add raw megabytes meanwhile. Lower it with every converted folder.
"""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOCS_BUDGET_MB = 180  # final target: 40 (after every RAW_LEGACY folder is compacted)
STUDY_BUDGET_MB = 12
RAW_LEGACY = (
    "results/bench",
    "results/bench-ablations",
    "results/bench-long",
    "results/bench-longer",
    "results/demo",
    "results/markov-carry-over",
    "results/markov-exact-anchor",
    "results/markov-shaping",
    "results/markov-shaping-uniform/budget",
    "results/markov-shaping-uniform/small",
    "results/markov-student",
    "results/markov-student-uniform",
    "results/tiny",
    "results/tiny-shaping",
    "results/tiny-uniform",
    "results/tiny-uniform-students",
)


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


def _legacy(path: Path) -> bool:
    rel = path.relative_to(DOCS).as_posix()
    return any(rel == d or rel.startswith(d + "/") for d in RAW_LEGACY)


def test_no_new_raw_samples_under_docs():
    raw = [f for f in committed_files() if f.name.endswith(".jsonl") and not _legacy(f)]
    assert not raw, (
        f"{len(raw)} raw samples files under docs/ (first: {raw[0].relative_to(ROOT)}): run "
        "`python scripts/compact_samples.py FOLDER` (publish_report.py writes compact files)"
    )


def test_each_compacted_study_within_its_budget():
    sizes: dict[str, int] = {}
    for f in committed_files():
        rel = f.relative_to(DOCS).parts
        if len(rel) > 2 and rel[0] == "results" and not _legacy(f):
            sizes[rel[1]] = sizes.get(rel[1], 0) + f.lstat().st_size
    over = {k: round(v / 1e6, 1) for k, v in sizes.items() if v > STUDY_BUDGET_MB * 1e6}
    assert not over, f"study folders over {STUDY_BUDGET_MB} MB (MB): {over}"


def test_docs_within_budget():
    total = sum(f.lstat().st_size for f in committed_files())
    assert total <= DOCS_BUDGET_MB * 1e6, (
        f"docs/ holds {total / 1e6:.1f} MB, over its {DOCS_BUDGET_MB} MB budget: compact samples "
        "(scripts/compact_samples.py) and keep only the rows a claim cites"
    )


def test_legacy_folders_still_exist():
    """A converted or removed folder must leave RAW_LEGACY (the list only shrinks)."""
    stale = [d for d in RAW_LEGACY if not any((DOCS / d).rglob("*.jsonl"))]
    assert not stale, f"no raw samples left in {stale}: remove them from RAW_LEGACY"
