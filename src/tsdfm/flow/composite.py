"""The few-step sampler a *perfectly distilled* student would be: composed fine steps, factorised.

A shortcut student ``f(x_t, t, dt)`` is trained so that one jump of size ``dt`` lands, position
by position, where ``n`` jumps of size ``dt / n`` of its anchor would have landed. Its sampler
then draws every position independently from that composed law. This module builds that law
directly from a denoiser (e.g. the markov chain's exact one) instead of a trained network::

    for each of the S big steps (t -> t + dt):
        run M independent fine chains from x: n jumps of size dt / n with the denoiser
        x^i <- chain_{c_i}^i  with c_i ~ Uniform{1..M}, independently per position

Position ``i``'s new token is a draw from the fine chains' law at ``i`` (exactly, for any M);
two positions share a chain only with probability ``1 / M``, so the draw is factorised up to
that. It answers a question a trained student cannot: where does the distillation *target*
itself sit, separate from how well a network fits it?

Why it differs from the sampler driven by the same denoiser with S big jumps
(:func:`tsdfm.flow.sample`): for the **mask source** it does not, in law. A masked position's
law after any number of fine jumps is ``(1 - q) [MASK] + q p(x_1^i | x_t)`` because the exact
denoiser is a martingale (``x_t`` holds no information ``x_s`` lacks, s > t). For the **uniform
source** it does: a token that survived a fine jump is read by the next one as partly clean
(the posterior at ``t + h`` cannot know it was noise at ``t``), so the composed law keeps the
current token more often than ``(1 - q) + q p(x_t^i | x_t)``, and the composed step carries
noise forward that one big posterior jump would have replaced
(``tests/test_composite.py`` measures both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tsdfm.errors import TsdfmError
from tsdfm.flow.jump import jump
from tsdfm.flow.scheduler import Scheduler

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Composite:
    """``substeps`` fine jumps per big step, ``chains`` fine chains, on one path (``scheduler``,
    ``source``, ``mask_id``)."""

    substeps: int
    chains: int
    scheduler: Scheduler
    source: str
    mask_id: int

    def __post_init__(self) -> None:
        if self.substeps < 1 or self.chains < 1:
            raise TsdfmError(
                f"substeps and chains must be >= 1, got {self.substeps} and {self.chains}"
            )

    @torch.no_grad()
    def step(
        self, model_fn: ModelFn, x: Tensor, t: float, dt: float, generator: torch.Generator
    ) -> Tensor:
        """One big step ``t -> t + dt`` from ``x [B, L]``: the fine chains, then one chain's token
        per position, picked independently (module doc)."""
        B, L = x.shape
        y = x.repeat_interleave(self.chains, 0)
        h = dt / self.substeps
        for j in range(self.substeps):
            tt = torch.full((y.shape[0],), t + j * h, dtype=torch.float64)
            hh = torch.full_like(tt, h)
            logits = model_fn(y, tt.float(), hh.float())
            y = jump(y, logits, tt, hh, self.scheduler, self.source, self.mask_id, generator)
        pick = torch.randint(0, self.chains, (B, 1, L), generator=generator)
        return y.view(B, self.chains, L).gather(1, pick).squeeze(1)

    @torch.no_grad()
    def sample(
        self, model_fn: ModelFn, x0: Tensor, steps: int, generator: torch.Generator
    ) -> Tensor:
        """``steps`` big steps on the uniform grid from ``x0 [B, L]``; returns the ids. Costs
        ``steps * substeps`` denoiser calls on ``B * chains`` rows."""
        if steps < 1:
            raise TsdfmError(f"steps must be >= 1, got {steps}")
        x = x0
        for k in range(steps):
            x = self.step(model_fn, x, k / steps, 1 / steps, generator)
        return x


__all__ = ["Composite"]
