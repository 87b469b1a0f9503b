"""Inference speed settings shared by the sampler, ``tsdfm serve`` and ``benchmarks/speed.py``.

Two knobs, both off the numerics that matter: the denoiser's forward pass may run under bf16
autocast (its logits come back as float32 and are turned into float64 log-probabilities
inside the jump, so the categorical draws stay float64 Gumbel-max whatever the forward used),
and the model may be wrapped by ``torch.compile``.

``auto`` picks bf16 where it was measured to pay: a CUDA GPU with bf16 support, or a CPU with
AMX tile units (``amx_bf16`` in ``/proc/cpuinfo``; the training benchmark measured 1.5x there).
On a CPU without AMX, bf16 matmuls are emulated and slower than fp32 (``benchmarks/speed.py``
has the rows), so ``auto`` stays fp32.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

from tsdfm.distributed import PRECISIONS, resolve_precision
from tsdfm.errors import TsdfmError


@lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True when the CPU advertises AMX bf16 tiles (Linux ``/proc/cpuinfo`` flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(
        line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines()
    )


def sampling_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for sampling on ``device`` (None: plain fp32).

    ``auto``: bf16 on CUDA (when supported) and on AMX CPUs, else fp32; ``bf16``/``fp32`` force.
    """
    if precision not in PRECISIONS:
        raise TsdfmError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision == "auto" and device.type == "cpu":
        precision = "bf16" if cpu_has_amx() else "fp32"
    return resolve_precision(precision, device)


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``'s type, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model, dynamic=True)`` when enabled (batch sizes vary from call to call,
    so shapes are marked dynamic instead of recompiling per batch size)."""
    return torch.compile(model, dynamic=True) if enabled else model
