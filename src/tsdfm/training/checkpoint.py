"""Training checkpoints: atomic, checksummed, with an atomic ``latest`` pointer; keep the last k.

``checkpoints/step_0000500.pt`` holds everything needed to continue *exactly*: model, EMA,
optimizer, LR scheduler, the noise generator's state and the step. ``checkpoints/latest.json``
names the newest file and its sha256; it is replaced atomically after the checkpoint itself is
complete, so a crash at any instant leaves a loadable pair. A corrupt newest checkpoint is named
and the previous one is used instead.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import torch

from tsdfm.artifacts import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from tsdfm.errors import TsdfmError

POINTER = "latest.json"
INDEX = "index.json"
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


class CheckpointManager:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory)
        self.keep = max(1, keep)

    def _index(self) -> list[dict[str, Any]]:
        path = self.directory / INDEX
        return read_json(path, "checkpoint index") if path.is_file() else []

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
        return (self.directory / POINTER).is_file()

    def load_latest(self, cleanup: bool = True, verbose: bool = True) -> tuple[dict[str, Any], int]:
        """Newest intact checkpoint; skips (and names) corrupt ones, errors if none is intact.

        Under torchrun every rank reads the checkpoint but only rank 0 (``cleanup``) removes
        leftovers and (``verbose``) reports fallbacks; all ranks pick the same file.
        """
        if not self.has_checkpoint():
            raise TsdfmError(f"no checkpoint to resume from in {self.directory}")
        # A run killed mid-write leaves its temp file behind (never a half-written checkpoint).
        for leftover in self.directory.glob(".*.tmp") if cleanup else ():
            leftover.unlink(missing_ok=True)
        candidates = [read_json(self.directory / POINTER, "checkpoint pointer")]
        candidates += [e for e in reversed(self._index()) if e["step"] != candidates[0]["step"]]
        problems = []
        for entry in candidates:
            path = self.directory / entry["file"]
            if not path.is_file():
                problems.append(f"{path} is missing")
                continue
            if sha256_file(path) != entry["sha256"]:
                problems.append(f"{path} is corrupt (checksum mismatch)")
                continue
            if problems and verbose:
                print(f"warning: {'; '.join(problems)}; resuming from {path.name} instead")
            state = torch.load(path, map_location="cpu", weights_only=False)
            return state, entry["step"]
        raise TsdfmError("no intact checkpoint: " + "; ".join(problems))
