"""Compact the samples files of committed study folders: ``.jsonl`` -> ``.jsonl.gz``.

    python scripts/compact_samples.py docs/results/markov-shaping-uniform [--drop '*_4' ...]

Every ``*.jsonl`` under the folders becomes ``*.jsonl.gz`` (ids-only records when the texts are
the ids written out, as on ``markov``: see :mod:`tsdfm.sample_files`), after checking that the
compact file reads back to exactly the same ids and texts. A link to another folder's samples
file (two studies sharing a row) becomes a link to that file's ``.gz``: convert the folder it
points into first. Every ``results.json`` whose rows name a converted file is rewritten to name
the ``.gz``. Metrics are not recomputed. Every reader (``tsdfm evaluate --samples``, the
reports, the study drivers) reads both forms, so nothing else changes.

``--drop GLOB`` (matched against the name without ``.jsonl`` / ``.jsonl.gz``) removes samples
files no claim cites, with their ``.meta.json``, whether raw or compacted in an earlier run. A
row whose file is dropped, or was never committed, keeps its metrics in ``results.json``; its
``samples`` becomes null and ``samples_dropped`` names the file, which the folder's README
command regenerates.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from pathlib import Path

from tsdfm.generation import read_samples
from tsdfm.sample_files import meta_path, resolve_samples, samples_stem, write_compact


def _dropped(path: Path, drop: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(samples_stem(path), g) for g in drop)


def compact_file(path: Path) -> Path:
    ids, texts, _ = read_samples(path)
    out = write_compact(path, ids.tolist(), texts)
    back_ids, back_texts, _ = read_samples(out)
    if back_ids.tolist() != ids.tolist() or back_texts != texts:
        out.unlink()
        raise SystemExit(f"error: {out} does not read back as {path}; left {path} as it was")
    path.unlink()
    return out


def _remove(path: Path) -> None:
    path.unlink()
    meta = meta_path(path)
    if meta.is_symlink() or meta.is_file():
        meta.unlink()


def relink(link: Path) -> Path | None:
    """``a.jsonl -> b.jsonl`` becomes ``a.jsonl.gz -> b.jsonl.gz``; None (link removed) when
    the file it names is not committed at all."""
    target = Path(os.readlink(link))
    resolved = link.parent / target
    if resolved.is_file() and resolved.resolve().name.endswith(".jsonl"):
        raise SystemExit(
            f"error: {link} links to {resolved}, not compacted yet: convert its folder first"
        )
    if not resolve_samples(resolved).is_file():
        _remove(link)
        return None
    gz_target = target.with_name(resolve_samples(resolved).name)
    out = link.with_name(link.name + ".gz")
    link.unlink()
    out.symlink_to(gz_target)
    return out


def _links_to_raw_link(link: Path) -> bool:
    target = link.parent / os.readlink(link)
    return target.is_symlink() and target.name.endswith(".jsonl")


def rewrite_results(results_path: Path, drop: list[str]) -> int:
    """Point rows at ``.jsonl.gz`` where the plain file is gone; null the uncommitted ones."""
    results = json.loads(results_path.read_text(encoding="utf-8"))
    changed = 0
    for row in results.get("rows", []):
        rel = row.get("samples")
        if not rel:
            continue
        path = results_path.parent / rel
        found = resolve_samples(path)
        if _dropped(path, drop) or not found.is_file():
            row["samples"] = None
            row["samples_dropped"] = (
                f"{rel.removesuffix('.gz')}: not committed (no claim cites it); "
                "the folder's README command regenerates it"
            )
            changed += 1
        elif found != path:
            row["samples"] = rel + ".gz"
            changed += 1
    if changed:
        results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return changed


def compact(folder: Path, drop: list[str]) -> tuple[int, int]:
    """(files compacted or relinked, files dropped) under ``folder``."""
    converted = dropped = 0
    paths = sorted(folder.rglob("*.jsonl"))
    own = {p.resolve() for p in paths if not p.is_symlink()}
    for link in (p for p in paths if p.is_symlink() and not _dropped(p, drop)):
        final = link.resolve()
        if final.is_file() and final.name.endswith(".jsonl") and final not in own:
            raise SystemExit(
                f"error: {link} links to {final}, not compacted yet: convert its folder first"
            )
    # A folder compacted earlier holds .jsonl.gz files: --drop removes those as well.
    done = sorted(folder.rglob("*.jsonl.gz"))
    for path in (p for p in paths + done if _dropped(p, drop)):
        _remove(path)
        dropped += 1
    links = [p for p in paths if p.is_symlink() and not _dropped(p, drop)]
    for path in (p for p in paths if not p.is_symlink() and not _dropped(p, drop)):
        compact_file(path)
        converted += 1
    while links:  # a link to a link waits until the one it names is relinked
        waiting = [p for p in links if _links_to_raw_link(p)]
        if len(waiting) == len(links):
            raise SystemExit(f"error: {links[0]} is part of a cycle of links")
        for path in (p for p in links if p not in waiting):
            if relink(path) is None:
                dropped += 1
            else:
                converted += 1
        links = waiting
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
