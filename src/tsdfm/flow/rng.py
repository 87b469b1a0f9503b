"""Random draws from an explicit ``torch.Generator``, in float64.

Every random number in :mod:`tsdfm.flow` comes from a generator passed by the caller, never
from torch's global RNG, so a run is reproducible and a resumed run continues exactly.
Draws are made on the generator's own device and then moved to the device of the data:
the same seed gives the same numbers whether the model runs on CPU or GPU (pass a CUDA
generator to keep large draws on the GPU).

Categorical draws use float64 Gumbel noise. With float32 (or lower) noise the largest
Gumbel values are truncated, which quietly lowers sample entropy and flatters perplexity
(DESIGN sections 2 and 7, arXiv 2409.02908).
"""

from __future__ import annotations

import torch
from torch import Tensor

_F64 = torch.float64
# u in [TINY, 1 - EPS/2] keeps -log(-log(u)) finite: log(TINY) ~ -708, log(1 - EPS/2) ~ -1.1e-16.
_U_LOW = torch.finfo(_F64).tiny
_U_HIGH = 1.0 - torch.finfo(_F64).eps / 2


def uniform(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """float64 uniforms in [0, 1) of ``shape``, drawn on the generator's device, moved to ``device``."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=_F64)
    return u if device is None else u.to(device)


def gumbel(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Standard Gumbel noise ``g = -log(-log(u))`` in float64, with ``u`` clamped into (0, 1)."""
    u = uniform(shape, generator, device).clamp_(_U_LOW, _U_HIGH)
    return u.log_().neg_().log_().neg_()  # in place: the same values, no [N, V] temporaries


def categorical(logits: Tensor, generator: torch.Generator) -> Tensor:
    """One draw per row of ``logits [..., V]`` by the Gumbel-max trick, in float64.

    ``argmax_y (logits[y] + g[y])`` with i.i.d. standard Gumbel ``g`` is distributed as
    ``softmax(logits)``; ``logits`` may be unnormalised (log-probabilities or raw logits)
    and may hold ``-inf`` for excluded classes. Exactly one uniform per entry of ``logits``
    is drawn, whatever the values, so the generator advances by the same amount every call.
    Returns a LongTensor of shape ``logits.shape[:-1]``.
    """
    g = gumbel(logits.shape, generator, logits.device)
    return torch.argmax(g.add_(logits), dim=-1)  # float64 sum: g + logits == logits + g
