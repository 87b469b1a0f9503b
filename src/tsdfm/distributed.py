"""Multi-process plumbing: torchrun's environment, the process group, devices and seeds.

Every stage runs unchanged under ``torchrun --nproc_per_node=N``: torchrun sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`setup` joins the
process group from them (``env://``), so no port is ever chosen here. Without those variables (or
with ``WORLD_SIZE=1``) nothing is initialised and every helper is a no-op: a plain
``tsdfm train ...`` stays exactly the single-process program it always was.

The backend is gloo on a CPU-only machine and ``cpu:gloo,cuda:nccl`` where CUDA exists: NCCL for
the gradients of a GPU run, gloo for the small Python objects (generator states, samples) that
live in host memory, whatever device a stage trains on.

Seeds: one run needs several independent random streams (one per data shard, see
:mod:`tsdfm.training.loop`). :func:`derive_seed` maps ``(seed, keys...)`` to a 63-bit seed with
numpy's ``SeedSequence``, which mixes its inputs so that nearby keys give unrelated streams
(``seed + rank`` would make rank 1 of seed 0 the same stream as rank 0 of seed 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tsdfm.errors import TsdfmError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
# Rank 0 validates, samples and writes checkpoints while the others wait in a collective; a
# 170M-parameter checkpoint on a slow disk can take minutes, so be generous before giving up.
_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank among ``world_size`` and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """True when there are other processes to agree with (collectives are real)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, logs and progress bars."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise TsdfmError(f"environment variable {name}={raw!r} is not an integer") from None


def launched_world_size() -> int:
    """``WORLD_SIZE`` as torchrun set it (1 when not launched by torchrun)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else the CPU; ``cpu``; ``cuda``."""
    if name not in DEVICES:
        raise TsdfmError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TsdfmError(
            "device=cuda was asked for but this torch build or machine has no CUDA; use "
            "cpu or auto (train.device, or --device when sampling), or install a CUDA build "
            "of torch on a GPU machine"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise TsdfmError(
            f"local rank {local_rank} has no GPU of its own ({count} visible): launch at most "
            f"--nproc_per_node={count} processes per node, or set train.device=cpu"
        )
    return torch.device("cuda", local_rank)


def as_device(device: str | torch.device) -> torch.device:
    """Where a single process runs: the names ``auto`` / ``cpu`` / ``cuda`` through
    :func:`resolve_device` (``auto``: the GPU when CUDA is available; ``cuda`` without one: a
    clear error), anything else (``cuda:1``, a ``torch.device``) as torch reads it."""
    if isinstance(device, str) and device in DEVICES:
        return resolve_device(device)
    return torch.device(device)


def setup(device: str = "auto") -> DistContext:
    """Join torchrun's process group (once per process) and pick this rank's device.

    Idempotent: every stage calls it, only the first call initialises. Raises
    :class:`TsdfmError` when ``WORLD_SIZE`` > 1 without the rendezvous variables, which means
    the program was not started by torchrun.
    """
    world = launched_world_size()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
        if missing:
            raise TsdfmError(
                f"WORLD_SIZE={world} but {', '.join(missing)} not set: start multi-process runs "
                "with torchrun (e.g. `torchrun --standalone --nproc_per_node=2 -m tsdfm.cli train "
                "teacher ...`), or unset WORLD_SIZE"
            )
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", timeout=_TIMEOUT)
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown() -> None:
    """Leave the process group (end of a command); a no-op when none was joined.

    Every rank passes a barrier first. Without it a fast rank can tear down its gloo
    connections while a slower one still has them open, and the slower rank's gloo threads
    abort the process (``terminate called without an active exception``, SIGABRT) after the
    work itself succeeded: seen once in CI at the end of a resumed 2-process run.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in one process). Used after rank 0 writes files others read."""
    if _active():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks, in place and returned (identity in one process)."""
    if _active():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in one process)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def derive_seed(seed: int, *keys: int) -> int:
    """A seed for stream ``keys`` of run ``seed``: well mixed, non-negative, fits a generator."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, *(int(k) & 0xFFFFFFFFFFFFFFFF for k in keys)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on ``device``: draws happen where the data is (no host round trip)."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on a CUDA GPU that supports it (``auto``/``bf16``), else None.

    ``auto`` never uses bf16 on the CPU: it would change the numbers of the small CPU configs, and
    on CPUs without bf16 matrix units it is slower than fp32. ``bf16`` there is allowed: it tests
    the code path without a GPU, and on CPUs with AMX it is faster for long runs
    (``benchmarks/train_precision.py`` measures it). No gradient scaler is needed: bf16 has
    fp32's exponent range.
    """
    if name not in PRECISIONS:
        raise TsdfmError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    if name == "fp32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if name == "bf16":
            raise TsdfmError(
                "train.precision=bf16 but this GPU has no bf16 support; use precision=fp32 (or "
                "auto, which falls back to fp32)"
            )
        return None
    return torch.bfloat16 if name == "bf16" else None


__all__ = [
    "DEVICES",
    "PRECISIONS",
    "DistContext",
    "all_gather_object",
    "as_device",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "derive_seed",
    "launched_world_size",
    "make_generator",
    "resolve_device",
    "resolve_precision",
    "setup",
    "shutdown",
]
