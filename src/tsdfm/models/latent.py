"""The latents of the correlated students (docs/mixture.md): a per-sample code
(``student.kind=mixture``) and a chain of codes along the positions (``student.kind=chain``).

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

import math
from typing import Any

import torch
from torch import Tensor, nn


def latent_codes_of(model: Any) -> int:
    """``K`` of a mixture student (``model.config.latent_codes``), 0 for every other model
    (teachers, product students, plain callables such as the exact denoisers)."""
    config = getattr(model, "config", None)
    return int(getattr(config, "latent_codes", 0) or 0)


def latent_chain_of(model: Any) -> bool:
    """True for a chain student (``config.latent_chain``): its latent is a chain of codes along
    the positions, drawn inside the model from uniform noise ``u [B, L]`` (:class:`LatentChain`)."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "latent_chain", False)) and latent_codes_of(model) > 0


def draw_model_latent(model: Any, x: Tensor, generator: torch.Generator | None) -> Tensor | None:
    """What ``model(x, t, dt, z)`` takes as ``z`` for the rows ``x [B, L]``: None for a model
    without a latent, ``B`` codes for a mixture student, uniform noise ``[B, L]`` (float32) for a
    chain student. Drawn from ``generator`` (on ``x``'s device), so a seed fixes every sample."""
    codes = latent_codes_of(model)
    if not codes:
        return None
    if latent_chain_of(model):
        return torch.rand(x.shape, generator=generator, device=x.device)
    return draw_latent(x.shape[0], codes, generator, x.device)


def draw_latent(
    rows: int, codes: int, generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    """``rows`` independent uniform codes ``[rows]`` (int64) in ``0..codes-1`` on ``device``,
    drawn from ``generator`` (on the same device) or, when None, from torch's global one."""
    return torch.randint(0, codes, (rows,), generator=generator, device=device)


# A fresh chain's probability of keeping its code from one position to the next: correlated
# enough that neighbouring positions share codes from the start (the codes separate only where
# they co-occur), far from the per-sample mixture's 1.
CHAIN_INIT_STAY = 0.5
# Size of the fresh per-code offsets relative to the (layer-normalised, unit-scale) features
# they are added to: ``delta_z(h)`` has per-dimension scale CHAIN_INIT_SCALE (weights of std
# CHAIN_INIT_SCALE / sqrt(dim)). The codes must start apart: with identical codes every code
# gets the same gradient, and near-identical ones separate only as fast as the correlation
# term's second-order pull, which the per-sample noise of one composed draw buries. On the
# L = 2 chain of tests/test_mixture.py at lr 3e-4 (batch 32, K = 8), per-dimension scales
# 0.08 / 0.15 / 0.3 / 0.6 / 1.2 reached the composed step's correlation after > 1,200 / 800 /
# 600 / 400 / < 400 steps.
CHAIN_INIT_SCALE = 0.5


class LatentChain(nn.Module):
    """The head of a chain student: a Markov chain of codes along the positions, read by the
    output layer.

    **Why a chain, not one code per sample.** A step of ``n`` positions whose pairs of close
    positions each need their own correlation (a Markov chain's adjacent tokens, committed in
    the same step) has a total correlation that grows with ``n``; a mixture of ``K`` products
    over one shared code carries at most ``I(z; y) <= log K`` nats of it, whatever the network.
    Here each position ``i`` has its own code ``z_i``, the codes form a Markov chain whose
    transitions are read off the network's features (``P(z_i = b | z_{i-1} = a) =
    softmax_b(A_ab + (W h_i)_ab)``, ``z_0`` uniform), and position ``i``'s logits are the head
    applied to ``h_i + delta_{z_i}(h_i)``. Given the codes the step is a product; over them it
    is a mixture of ``K^L`` products whose correlation between positions ``i`` and ``j``
    decays with the chain's mixing between them, so it can hold ``log K`` nats per *pair of
    neighbours*. The per-sample mixture is the chain that never moves.

    **Exact likelihood.** Positions are conditionally independent given the codes and the codes
    form a chain, so ``log P(y)`` is the forward algorithm of a hidden Markov model, exact, in
    ``O(L K^2)`` (``tsdfm.training.mixture.chain_losses``).

    **Sampling** costs one network pass: the codes are drawn position by position from uniform
    noise ``u [B, L]`` (inverse CDF, ``L`` small ``[B, K]`` operations) after the body has run,
    then one head call at the drawn codes. The noise comes from the caller's generator
    (:func:`draw_model_latent`), so a seed still fixes every sample.
    """

    def __init__(self, dim: int, codes: int):
        super().__init__()
        self.codes = codes
        self.offsets = nn.Linear(dim, codes * dim, bias=False)
        self.transitions = nn.Linear(dim, codes * codes)
        nn.init.normal_(self.offsets.weight, std=CHAIN_INIT_SCALE / math.sqrt(dim))
        nn.init.zeros_(self.transitions.weight)
        stay = math.log(CHAIN_INIT_STAY * (codes - 1) / (1 - CHAIN_INIT_STAY))
        with torch.no_grad():
            self.transitions.bias.copy_(torch.eye(codes).flatten() * stay)

    def log_transitions(self, h: Tensor) -> Tensor:
        """``log P(z_i = b | z_{i-1} = a)`` ``[B, L, K, K]`` (row ``i = 0`` unused: uniform)."""
        k = self.codes
        return torch.log_softmax(self.transitions(h).float().view(*h.shape[:2], k, k), dim=-1)

    def all_offsets(self, h: Tensor) -> Tensor:
        """``delta_z(h_i)`` for every code ``[B, L, K, dim]``."""
        return self.offsets(h).view(*h.shape[:2], self.codes, h.shape[-1])

    def draw_codes(self, h: Tensor, u: Tensor) -> Tensor:
        """The code chain ``[B, L]`` (int64) for the noise ``u [B, L]`` in [0, 1)."""
        if u.shape != h.shape[:2] or not u.is_floating_point():
            raise ValueError(
                f"a chain student's latent is uniform noise of shape {tuple(h.shape[:2])}, "
                f"got {tuple(u.shape)} {u.dtype}"
            )
        k = self.codes
        probs = self.log_transitions(h).exp()
        u = u.float()
        codes = torch.empty(h.shape[:2], dtype=torch.long, device=h.device)
        codes[:, 0] = (u[:, 0] * k).long().clamp_(max=k - 1)
        for i in range(1, h.shape[1]):
            row = probs[:, i].gather(1, codes[:, i - 1, None, None].expand(-1, 1, k)).squeeze(1)
            below = (row.cumsum(-1) <= u[:, i, None]).sum(-1)
            codes[:, i] = below.clamp_(max=k - 1)
        return codes

    def forward(self, h: Tensor, u: Tensor) -> Tensor:
        """``h_i + delta_{z_i}(h_i)`` ``[B, L, dim]`` at the codes drawn from ``u``."""
        codes = self.draw_codes(h, u)
        picked = self.all_offsets(h).gather(
            2, codes[:, :, None, None].expand(-1, -1, 1, h.shape[-1])
        )
        return h + picked.squeeze(2)


__all__ = [
    "LatentChain",
    "draw_latent",
    "draw_model_latent",
    "latent_chain_of",
    "latent_codes_of",
]
