"""The CSV logs of a run (``log.csv``, ``eval.csv``): one row per logged step, whole rows only.

A row is appended with one ``write`` of a complete line, so a kill can at worst leave a partial
*last* line (no newline). Resume rewrites each log to the rows a checkpoint at step S vouches
for: complete lines (ending in a newline, with the header's number of fields) whose step is at
most S. That drops the partial line (which the next append would otherwise merge with its own
row) and the rows of steps that are about to be trained again (which would be duplicates).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tsdfm.artifacts import atomic_write_text

LOGS = ("log.csv", "eval.csv")


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` (with a header first when the file is new) in a single write."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(row))
    if not path.exists():
        w.writeheader()
    w.writerow(row)
    with open(path, "a", newline="") as f:
        f.write(buf.getvalue())


def remove_logs(out_dir: Path) -> None:
    """A fresh (not resumed) run starts its logs empty."""
    for name in LOGS:
        (Path(out_dir) / name).unlink(missing_ok=True)


def truncate_logs(out_dir: Path, step: int) -> int:
    """Keep only whole rows with ``step <= step`` in every log; returns how many were dropped."""
    dropped = 0
    for name in LOGS:
        path = Path(out_dir) / name
        if path.is_file():
            dropped += _truncate(path, step)
    return dropped


def _truncate(path: Path, step: int) -> int:
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].endswith("\n"):  # not even a whole header
        path.unlink()
        return 0
    header, keep, dropped = lines[0], [], 0
    width = len(next(csv.reader([header])))
    for line in lines[1:]:
        row_step = _row_step(line, width)
        if row_step is not None and row_step <= step:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, header + "".join(keep))
    return dropped


def _row_step(line: str, width: int) -> int | None:
    """The step of a whole row, or None for a partial or malformed line."""
    if not line.endswith("\n"):
        return None
    fields = next(csv.reader([line]), [])
    if len(fields) != width:
        return None
    try:
        return int(fields[0])
    except ValueError:
        return None
