"""Training objectives plugged into the shared loop.

An objective maps ``(model, clean batch x1, generator)`` to ``(loss, metrics)``. The loop owns
everything else (optimiser, EMA, checkpoints, logging), so a new stage is a new objective only.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from tsdfm.flow import cross_entropy, generalized_kl, make_scheduler, sample_path, sample_time


class Objective(Protocol):
    def __call__(
        self, model: nn.Module, x1: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class DenoisingObjective:
    """DFM teacher loss: ``t ~ U[0,1)``, ``x_t`` from the mixture path, CE (or generalized KL)
    of the denoiser against ``x1`` on the positions that can still change (masked positions for
    the mask source, all positions for the uniform source). Unmasked positions of the mask source
    never change at sampling time, so spending loss on copying them only dilutes the signal.
    """

    def __init__(
        self,
        source: str,
        scheduler: str,
        exponent: float,
        mask_id: int,
        num_classes: int,
        loss: str = "ce",
    ):
        self.source, self.mask_id, self.num_classes, self.loss = source, mask_id, num_classes, loss
        self.scheduler = make_scheduler(scheduler, exponent)

    def __call__(self, model, x1, generator):
        t = sample_time(x1.shape[0], generator).to(x1.device)
        x_t = sample_path(
            x1, t, self.scheduler, self.source, self.mask_id, self.num_classes, generator
        )
        logits = model(x_t, t)
        weights = (x_t == self.mask_id) if self.source == "mask" else None
        if self.loss == "gkl":
            loss = generalized_kl(logits, x1, x_t, t, self.scheduler, weights)
        else:
            loss = cross_entropy(logits, x1, weights)
        return loss, {}


class NextTokenObjective:
    """Causal LM loss: next-token cross-entropy (first token predicted from BOS)."""

    def __call__(self, model, x1, generator):
        return model.token_nll(x1).mean(), {}
