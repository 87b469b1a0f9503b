"""The per-sample latent code of a mixture student (``student.kind=mixture``, docs/mixture.md).

A mixture student ``f(x_t, t, dt, z)`` takes, besides the noisy ids, a categorical code
``z ~ Uniform{0..K-1}`` (``K = config.latent_codes``), one draw per sample per step. Given ``z``
its step is a product over positions, as any denoiser's; averaged over ``z`` it is a mixture of
``K`` products, which can carry correlations between the positions one step commits. A finite
code set makes the mixture's likelihood exact in training (a sum over the ``K`` codes, no
sampled bound; a Gaussian latent with a few draws was tried first and the sampled bound's bias
kept the draws from separating on the L = 2 test chain).

The draws come from the caller's ``torch.Generator`` (the sampler's, the serving job's, the
training loop's), so a seed still fixes every sample. A model whose forward is called without
``z`` draws it from torch's global generator (a call site that knows nothing of latents still
works; it is reproducible under ``torch.manual_seed`` only).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def latent_codes_of(model: Any) -> int:
    """``K`` of a mixture student (``model.config.latent_codes``), 0 for every other model
    (teachers, product students, plain callables such as the exact denoisers)."""
    config = getattr(model, "config", None)
    return int(getattr(config, "latent_codes", 0) or 0)


def draw_latent(
    rows: int, codes: int, generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    """``rows`` independent uniform codes ``[rows]`` (int64) in ``0..codes-1`` on ``device``,
    drawn from ``generator`` (on the same device) or, when None, from torch's global one."""
    return torch.randint(0, codes, (rows,), generator=generator, device=device)


__all__ = ["draw_latent", "latent_codes_of"]
