"""The mixture probability path: sources, noisy samples x_t, and training times.

Gat et al. 2024 (DESIGN section 2): draw ``x0`` from the source and ``x1`` from the data;
at time ``t`` each position independently shows ``x1[i]`` with probability ``kappa(t)``
and ``x0[i]`` otherwise::

    p_t(x_t[i] | x0, x1) = kappa(t) * delta(x_t[i] == x1[i]) + (1 - kappa(t)) * delta(x_t[i] == x0[i])

Two sources: ``"mask"`` (every position is the ``[MASK]`` id, ``mask_id == num_classes``)
and ``"uniform"`` (i.i.d. uniform over the ``num_classes`` real tokens). Under the uniform
source a position can show its data token by chance, so the fraction of positions equal
to ``x1`` is ``kappa + (1 - kappa) / V`` rather than ``kappa``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tsdfm.errors import TsdfmError
from tsdfm.flow.rng import uniform
from tsdfm.flow.scheduler import Scheduler

SOURCES = ("mask", "uniform")


def check_source(source: str) -> None:
    """Raise :class:`TsdfmError` unless ``source`` is one of :data:`SOURCES`."""
    if source not in SOURCES:
        raise TsdfmError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")


def changeable_positions(x: Tensor, source: str, mask_id: int) -> Tensor:
    """The positions of ``x [B, L]`` that a step can still change (bool ``[B, L]``): the masked
    ones on the mask path (a committed token never moves again), every one on the uniform path
    (any token can jump)."""
    if source == "mask":
        return x == mask_id
    return torch.ones_like(x, dtype=torch.bool)


def sample_source(
    shape: tuple[int, ...] | torch.Size,
    source: str,
    mask_id: int,
    num_classes: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``x0``: all ``mask_id`` (mask source) or i.i.d. uniform over ``[0, num_classes)``.

    The mask source draws nothing from ``generator``; the uniform source draws one integer
    per position on the generator's device before moving the result to ``device``.
    """
    check_source(source)
    if num_classes < 1:
        raise TsdfmError(f"num_classes must be >= 1, got {num_classes}")
    shape = tuple(shape)
    if source == "mask":
        return torch.full(shape, int(mask_id), dtype=torch.long, device=device)
    x0 = torch.randint(0, num_classes, shape, generator=generator, device=generator.device)
    return x0 if device is None else x0.to(device)


def sample_path(
    x1: Tensor,
    t: Tensor,
    scheduler: Scheduler,
    source: str,
    mask_id: int,
    num_classes: int,
    generator: torch.Generator,
) -> Tensor:
    """Draw ``x_t`` for data ``x1 [B, L]`` at per-row times ``t [B]``.

    ``x0`` is drawn here from ``source``; then ``x_t[i] = x1[i]`` where ``u[i] < kappa(t)``
    for float64 uniforms ``u``, else ``x0[i]``. Returns a LongTensor like ``x1``.
    """
    if x1.dim() != 2:
        raise TsdfmError(f"x1 must have shape [B, L], got {tuple(x1.shape)}")
    t = torch.as_tensor(t, device=x1.device)
    if t.dim() == 0:
        t = t.expand(x1.shape[0])
    if t.shape != (x1.shape[0],):
        raise TsdfmError(f"t must have shape [B] = [{x1.shape[0]}], got {tuple(t.shape)}")
    x0 = sample_source(x1.shape, source, mask_id, num_classes, generator, x1.device)
    keep_data = (
        uniform(x1.shape, generator, x1.device) < scheduler.kappa(t.to(torch.float64))[:, None]
    )
    return torch.where(keep_data, x1, x0)


def sample_time(
    batch: int,
    generator: torch.Generator,
    t_max: float = 1.0,
    eps: float = 1e-3,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training times ``t ~ Uniform[0, t_max - eps)`` as float32 ``[batch]``.

    Staying ``eps`` below 1 keeps the loss weight ``kappa'(t) / (1 - kappa(t))`` finite.
    """
    hi = float(t_max) - float(eps)
    if not hi > 0:
        raise TsdfmError(f"t_max - eps must be > 0, got t_max={t_max}, eps={eps}")
    t = (uniform((batch,), generator, device) * hi).to(torch.float32)
    # Rounding to float32 may land on hi itself; clamp to the largest float32 below hi.
    top = torch.tensor(hi, dtype=torch.float32)
    if top.item() >= hi:
        top = torch.nextafter(top, torch.zeros_like(top))
    return t.clamp_(max=top.item())
