"""Every relative link in the repository's markdown points at a file that exists.

Results are reached from the README through chains of relative links; one wrong ``../``
silently cuts a report off from the index, so the whole tree is checked (fast: text only).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
SKIP = {".venv", "runs", ".git", "node_modules", ".pytest_cache"}


def _markdown_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.md") if not SKIP.intersection(p.relative_to(ROOT).parts)]


def test_relative_markdown_links_resolve():
    files = _markdown_files()
    assert any(p.name == "README.md" and p.parent == ROOT for p in files)
    missing = []
    for path in files:
        for target in LINK.findall(path.read_text(encoding="utf-8", errors="replace")):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            resolved = (path.parent / target).resolve()
            if not resolved.is_relative_to(ROOT):  # ../shared/DESIGN.md lives beside the clone
                continue
            if not resolved.exists():
                missing.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not missing, "broken relative links:\n" + "\n".join(missing)


def test_readme_is_short_and_opens_with_the_two_commands():
    """The README is for users (at most 12,000 characters, `make demo` and `make test` first);
    research findings live in docs/findings.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 12_000, f"README.md is {len(text):,} characters: move detail to docs/"
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    assert "session" not in text.lower(), "no session numbers in the README (docs/findings.md)"


def test_results_rows_name_committed_samples_files():
    """A row of a committed ``results.json`` names a samples file that exists beside it, or
    none (``samples_dropped`` then names the file its README regenerates)."""
    bad = []
    for path in (ROOT / "docs").rglob("results.json"):
        for row in json.loads(path.read_text(encoding="utf-8")).get("rows", []):
            rel = row.get("samples")
            if rel and not (path.parent / rel).is_file():
                bad.append(f"{path.relative_to(ROOT)}: {rel}")
            if not rel and row.get("samples_dropped") is not None:
                assert "README" in row["samples_dropped"], (path, row["samples_dropped"])
    assert not bad, "results.json rows name missing samples files:\n" + "\n".join(bad)
