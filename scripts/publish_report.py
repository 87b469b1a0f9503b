"""Copy a pipeline run's report into ``docs/results/<name>/`` so it can be committed.

    python scripts/publish_report.py runs/demo docs/results/demo

Copies ``report/report.md``, ``report/results.json`` and ``report/plots/`` plus every samples
file the report rows name, compacted (``.jsonl.gz``, ids-only where the texts are the ids: see
``tsdfm.sample_files``) with its ``.meta.json`` provenance, and rewrites each row's ``samples``
path so it stays valid beside the copied report. Nothing is recomputed: the committed numbers
are exactly the run's. The committed tree stays small this way (``make check-size``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tsdfm.generation import read_samples
from tsdfm.sample_files import meta_path, resolve_samples, write_compact


def publish(run_dir: Path, dest: Path) -> list[Path]:
    report = run_dir / "report"
    results_path = report / "results.json"
    if not results_path.is_file():
        raise SystemExit(f"error: {results_path} not found: run the pipeline to its report first")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "samples").mkdir(exist_ok=True)
    copied = []
    for row in results["rows"]:
        rel = row.get("samples")
        if not rel:
            continue
        src = resolve_samples((report / rel).resolve())
        if not src.is_file():
            raise SystemExit(f"error: row {row.get('label')!r} names {src}, which is missing")
        ids, texts, _ = read_samples(src)
        out = write_compact(dest / "samples" / src.name, ids.tolist(), texts)
        copied.append(out)
        if meta_path(src).is_file():
            shutil.copy2(meta_path(src), meta_path(out))
            copied.append(meta_path(out))
        row["samples"] = f"samples/{out.name}"
    shutil.copy2(report / "report.md", dest / "report.md")
    if (report / "plots").is_dir():
        shutil.copytree(report / "plots", dest / "plots", dirs_exist_ok=True)
    tmp = dest / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(dest / "results.json")
    return copied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a pipeline run directory (holds report/)")
    ap.add_argument("dest", type=Path, help="where to put the committed copy")
    args = ap.parse_args(argv)
    copied = publish(args.run_dir, args.dest)
    print(f"published {args.run_dir}/report -> {args.dest} ({len(copied)} samples files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
