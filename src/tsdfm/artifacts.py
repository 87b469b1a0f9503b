"""Files that cannot be half-written, and directories that can prove they are whole.

A crash or a full disk must never leave a truncated checkpoint where a good one stood, so every
write goes to a temporary file in the same directory, is flushed and fsync'd, and is then
``os.replace``-d over the target (atomic on POSIX). Every artifact directory carries a
``manifest.json`` with the sha256 of its files; loading verifies it and names the corrupt file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from tsdfm.errors import TsdfmError

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """One text per JSON value (sorted keys, no whitespace), so its hash is a fingerprint."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_json(obj: Any) -> str:
    return sha256_bytes(canonical_json(obj).encode("utf-8"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Binary file to write ``path`` through: a temp sibling, fsync'd and renamed on success.

    Created with mode 0o666 filtered by the umask, like a plain ``open``. On any exception the
    temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def publish_text(path: str | Path, text: str) -> None:
    """A study's markdown table: written atomically (parents created) and echoed to stdout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    print(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise TsdfmError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TsdfmError(
            f"{what} {path} is not valid JSON ({e}); it is corrupt, regenerate it"
        ) from e


def write_manifest(directory: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record the sha256 and size of every file under ``directory`` (except the manifest)."""
    directory = Path(directory)
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"):
            rel = p.relative_to(directory).as_posix()
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"created": now_iso(), "files": files, **(extra or {})}
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest


def verify_manifest(directory: Path, required: bool = True) -> dict[str, Any] | None:
    """Check every file listed in the manifest; raise naming the first missing/corrupt file."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        if required:
            raise TsdfmError(
                f"{directory} has no {MANIFEST}: it was not written completely (or not by tsdfm); "
                "re-create it"
            )
        return None
    manifest = read_json(mpath, "manifest")
    for rel, info in manifest.get("files", {}).items():
        p = directory / rel
        if not p.is_file():
            raise TsdfmError(f"{p} is listed in {mpath} but missing; the artifact is incomplete")
        if p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            raise TsdfmError(
                f"{p} is corrupt (checksum differs from {mpath}); restore it or re-create the "
                "artifact"
            )
    return manifest


def ensure_writable(directory: Path) -> None:
    """Fail early, before any work, when the output directory cannot be created or written.

    Walks up to the nearest existing ancestor: if that is a regular file (``out=notes.txt/run``)
    the directory can never be created, and if it denies writes nothing can be put in it.
    Checking this first is what keeps a stage from failing after hours with nothing saved.
    """
    directory = Path(directory)
    probe_parent = directory
    while not probe_parent.exists() and probe_parent != probe_parent.parent:
        probe_parent = probe_parent.parent
    if not probe_parent.is_dir():
        raise TsdfmError(
            f"output directory {directory} cannot be created: {probe_parent} is a file, not a "
            "directory; choose another --out"
        )
    if _is_virtual(probe_parent):
        raise TsdfmError(
            f"output directory {directory} is on a virtual file system ({probe_parent} holds no "
            "storage, like /proc and /sys); choose another --out"
        )
    if not os.access(probe_parent, os.W_OK):
        raise TsdfmError(
            f"output directory {directory} is not writable ({probe_parent} denies writes); "
            "choose another --out"
        )


def ensure_writable_file(path: Path) -> None:
    """:func:`ensure_writable` for an output *file* (``sample --out x.jsonl``): its directory
    must be creatable, and the name must not be taken by a directory."""
    path = Path(path)
    if path.is_dir():
        raise TsdfmError(
            f"output file {path} is an existing directory; name a file, e.g. {path / 'out.jsonl'}"
        )
    ensure_writable(path.parent)


def _is_virtual(path: Path) -> bool:
    """A pseudo file system (procfs, sysfs) reports zero blocks: nothing can be stored there,
    and its zero free space must not be reported as a full disk."""
    try:
        return os.statvfs(path).f_blocks == 0
    except (OSError, AttributeError):
        return False


@contextmanager
def removing_new_dirs_on_error(directory: Path) -> Iterator[None]:
    """Undo the creation of ``directory``'s missing ancestors if the body fails.

    A stage that creates ``runs/x/data``'s parents and then fails on bad input must leave the
    tree as it found it. Only directories that did not exist before and are empty afterwards
    are removed, so nothing anyone wrote is ever deleted.
    """
    directory = Path(directory).absolute()
    missing = []
    p = directory
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        for d in missing:  # deepest first
            if not d.exists():
                continue
            try:
                d.rmdir()
            except OSError:  # not empty (or not ours to remove): keep it and its parents
                break
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    """Hold ``directory/.lock`` while a stage trains into ``directory``.

    Two processes resuming the same run would interleave checkpoints and logs and silently
    corrupt it (easy to do with several study workers). The lock file holds the owner's pid
    and host; a lock whose process is gone (same host) is stale and taken over, anything else
    is refused with the owner named, before a single step is taken.
    """
    import socket

    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso()}
    for _ in range(2):  # a second try only after removing a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text())
            except (OSError, ValueError):
                owner = {}
            pid, host = owner.get("pid"), owner.get("host")
            if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise TsdfmError(
                f"{directory} is being trained by another process (pid {pid} on {host}, since "
                f"{owner.get('started', '?')}); wait for it to finish, or if it is gone, delete "
                f"{lock}"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:  # another process took the stale lock first
        raise TsdfmError(f"{directory} is being trained by another process; see {lock}")
    try:
        yield
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == me["pid"]:
                lock.unlink()
        except (OSError, ValueError):
            pass
