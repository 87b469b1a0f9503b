"""Compact the samples files of committed study folders: ``.jsonl`` -> ``.jsonl.gz``.

    python scripts/compact_samples.py docs/results/markov-shaping-uniform

Every ``*.jsonl`` under the folders becomes ``*.jsonl.gz`` (ids-only records when the texts are
the ids written out, as on ``markov``: see :mod:`tsdfm.sample_files`), after checking that the
compact file reads back to exactly the same ids and texts; every ``results.json`` whose rows name
a converted file is rewritten to name the ``.gz``. Metrics are not recomputed. Every reader
(``tsdfm evaluate --samples``, the reports, the study drivers) reads both forms, so nothing
else changes. ``--drop GLOB`` removes samples files no claim cites (their metrics stay in
``results.json``; the row's ``samples`` becomes null and ``samples_dropped`` says why).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

from tsdfm.generation import read_samples
from tsdfm.sample_files import meta_path, samples_stem, write_compact


def compact_file(path: Path) -> Path:
    ids, texts, _ = read_samples(path)
    out = write_compact(path, ids.tolist(), texts)
    back_ids, back_texts, _ = read_samples(out)
    if back_ids.tolist() != ids.tolist() or back_texts != texts:
        out.unlink()
        raise SystemExit(f"error: {out} does not read back as {path}; left {path} as it was")
    path.unlink()
    return out


def rewrite_results(results_path: Path, drop: list[str]) -> int:
    """Point rows at ``.jsonl.gz`` where the plain file is gone; null the dropped ones."""
    results = json.loads(results_path.read_text(encoding="utf-8"))
    changed = 0
    for row in results.get("rows", []):
        rel = row.get("samples")
        if not rel:
            continue
        path = results_path.parent / rel
        if any(fnmatch.fnmatch(samples_stem(path), g) for g in drop):
            row["samples"], row["samples_dropped"] = None, "not cited by any claim"
            changed += 1
        elif (
            rel.endswith(".jsonl")
            and not path.is_file()
            and path.with_suffix(".jsonl.gz").is_file()
        ):
            row["samples"] = rel + ".gz"
            changed += 1
    if changed:
        results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return changed


def compact(folder: Path, drop: list[str]) -> tuple[int, int]:
    converted = dropped = 0
    for path in sorted(folder.rglob("*.jsonl")):
        if any(fnmatch.fnmatch(samples_stem(path), g) for g in drop):
            path.unlink()
            meta_path(path).unlink(missing_ok=True)
            dropped += 1
        else:
            compact_file(path)
            converted += 1
    for results_path in sorted(folder.rglob("results.json")):
        rewrite_results(results_path, drop)
    return converted, dropped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="study folders under docs/results/")
    ap.add_argument("--drop", nargs="*", default=[], help="sample names (globs) to remove")
    args = ap.parse_args(argv)
    for folder in args.folders:
        converted, dropped = compact(folder, args.drop)
        print(f"{folder}: {converted} files compacted, {dropped} dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
