"""Training checkpoints: atomic, checksummed, tensors only, found again whatever survives.

``checkpoints/step_0000500.pt`` holds everything needed to continue *exactly*: model, EMA,
optimizer, LR scheduler, the noise generator's state and the step. ``checkpoints/index.json``
lists the kept files with their sha256 and ``checkpoints/latest.json`` names the newest; both
are replaced atomically after the checkpoint itself is complete, so a crash at any instant
leaves a loadable set.

Resume trusts no single file. The candidates are the pointer's entry, the index's entries and,
when both are lost or unreadable, a scan of the ``step_*.pt`` files; the newest one that exists,
matches its recorded sha256 (where one is recorded) and loads is used, and the others are named.

Nothing in a checkpoint can run code: it is read with ``torch.load(weights_only=True)``, which
rebuilds tensors, numbers, strings and containers only. A file that needs anything else (a
pickled object, i.e. a payload planted in a run directory someone handed you) is refused with
exit 2 before any of it runs.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tsdfm.artifacts import atomic_write_bytes, atomic_write_json, sha256_file
from tsdfm.errors import TsdfmError

POINTER = "latest.json"
INDEX = "index.json"
_STEP_FILE = re.compile(r"step_(\d+)\.pt")
# A checkpoint holds the weights four times over: model, EMA copy, and AdamW's two moments.
COPIES_PER_CHECKPOINT = 4


def estimate_checkpoint_bytes(model: torch.nn.Module) -> int:
    """Bytes one checkpoint of ``model`` will take (model + EMA + two optimiser moments)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return COPIES_PER_CHECKPOINT * sum(t.numel() * t.element_size() for t in tensors)


def check_disk_space(directory: Path, checkpoint_bytes: int) -> None:
    """Raise unless ``directory`` (or its nearest existing ancestor) has room for two checkpoints.

    Two, because the new checkpoint is written beside the old one before the old one is
    dropped: that overlap is what makes a crash during the write harmless. Called once before
    a run starts, so a full disk is reported before any work, and again before every save.
    """
    probe = Path(directory)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < 2 * checkpoint_bytes:
        raise TsdfmError(
            f"not enough disk space for a checkpoint in {directory} ({free / 2**20:.1f} MiB "
            f"free, {2 * checkpoint_bytes / 2**20:.1f} MiB needed): free some space or choose "
            "another --out, then run again (add --resume if the run has checkpoints)"
        )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Tensors and plain values only; a file that would need to unpickle objects is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise TsdfmError(
            f"{path} holds pickled objects besides tensors and was refused unread (a tsdfm "
            f"checkpoint never does; {str(e).splitlines()[0][:120]}): it was not written by "
            "tsdfm or was tampered with. Delete it (or the run directory) and train again"
        ) from None


class Loaded(NamedTuple):
    """A checkpoint chosen by :meth:`CheckpointManager.load_latest`."""

    state: dict[str, Any]
    step: int


class CheckpointManager:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory)
        self.keep = max(1, keep)

    # ------------------------------------------------------------------ the two records
    def _read_record(self, name: str) -> tuple[Any, str | None]:
        """(parsed JSON or None, a problem or None): a lost or damaged record is not fatal."""
        path = self.directory / name
        if not path.is_file():
            return None, None
        try:
            return json.loads(path.read_text(encoding="utf-8")), None
        except (OSError, ValueError) as e:
            return None, f"{path} is unreadable ({type(e).__name__})"

    def _index(self) -> list[dict[str, Any]]:
        index, _ = self._read_record(INDEX)
        return [e for e in index if _valid_entry(e)] if isinstance(index, list) else []

    def save(self, state: dict[str, Any], step: int) -> Path:
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        check_disk_space(self.directory, len(data))  # before mkdir: a full disk leaves no dir
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{step:07d}.pt"
        atomic_write_bytes(path, data)
        entry = {"file": path.name, "step": step, "sha256": sha256_file(path)}
        index = [e for e in self._index() if e["step"] != step] + [entry]
        index.sort(key=lambda e: e["step"])
        stale, index = index[: -self.keep], index[-self.keep :]
        atomic_write_json(self.directory / INDEX, index)
        atomic_write_json(self.directory / POINTER, entry)
        for e in stale:
            (self.directory / e["file"]).unlink(missing_ok=True)
        return path

    def has_checkpoint(self) -> bool:
        """Anything to resume from: a pointer, an index, or a checkpoint file."""
        d = self.directory
        return (d / POINTER).is_file() or (d / INDEX).is_file() or any(self._step_files())

    def _step_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [p for p in self.directory.iterdir() if _STEP_FILE.fullmatch(p.name)]

    def _candidates(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every checkpoint worth trying, newest first, and the records that were unreadable.

        The pointer and the index each name files with their sha256; files neither names
        (both records lost) are found by name, with no checksum to hold them to.
        """
        pointer, p_problem = self._read_record(POINTER)
        index, i_problem = self._read_record(INDEX)
        entries = [pointer] if _valid_entry(pointer) else []
        entries += [e for e in index if _valid_entry(e)] if isinstance(index, list) else []
        problems = [p for p in (p_problem, i_problem) if p]
        if not entries:
            for path in self._step_files():
                step = int(_STEP_FILE.fullmatch(path.name).group(1))
                entries.append({"file": path.name, "step": step, "sha256": None})
        by_step: dict[int, dict[str, Any]] = {}
        for e in entries:  # the pointer's entry wins over the index's for the same step
            by_step.setdefault(e["step"], e)
        return sorted(by_step.values(), key=lambda e: -e["step"]), problems

    def load_latest(self, cleanup: bool = True, verbose: bool = True) -> Loaded | None:
        """Newest intact checkpoint (skipping and naming damaged ones); None when none is.

        Under torchrun every rank reads the checkpoint but only rank 0 (``cleanup``) repairs
        the records and removes leftovers, and (``verbose``) reports; all ranks pick the same
        file. A checkpoint that would need to unpickle objects stops the run (exit 2).
        """
        candidates, problems = self._candidates()
        for entry in candidates:
            path = self.directory / entry["file"]
            if not path.is_file():
                problems.append(f"{path} is missing")
                continue
            digest = sha256_file(path)
            if entry["sha256"] is not None and digest != entry["sha256"]:
                problems.append(f"{path} is corrupt (checksum mismatch)")
                continue
            try:
                state = read_checkpoint(path)
            except TsdfmError:  # a planted payload: stop, do not look further
                raise
            except Exception as e:  # truncated or not a torch file (only when unchecksummed)
                problems.append(f"{path} does not load ({type(e).__name__})")
                continue
            if problems and verbose:
                print(f"warning: {'; '.join(problems)}; resuming from {path.name}")
            if cleanup:
                self._repair({**entry, "sha256": digest}, candidates)
            return Loaded(state, entry["step"])
        if problems and verbose:
            print(f"warning: {'; '.join(problems)}")
        return None

    def _repair(self, chosen: dict[str, Any], candidates: list[dict[str, Any]]) -> None:
        """Records that name ``chosen`` again, and no file beyond the ones they keep.

        Removes the temp files of a write cut short, checkpoints newer than ``chosen`` (they
        failed verification; training will write those steps again) and orphans: files a kill
        between the pointer write and the pruning left behind, which nothing would ever delete.
        """
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        older = [
            e
            for e in candidates
            if e["step"] < chosen["step"] and e["sha256"] and (self.directory / e["file"]).is_file()
        ]
        kept = sorted([chosen, *older[: self.keep - 1]], key=lambda e: e["step"])
        atomic_write_json(self.directory / INDEX, kept)
        atomic_write_json(self.directory / POINTER, chosen)
        names = {e["file"] for e in kept}
        for path in self._step_files():
            if path.name not in names:
                path.unlink(missing_ok=True)


def _valid_entry(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and isinstance(e.get("file"), str)
        and _STEP_FILE.fullmatch(e["file"]) is not None
        and isinstance(e.get("step"), int)
        and isinstance(e.get("sha256"), str)
    )
