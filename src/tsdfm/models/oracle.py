"""Exact denoisers of an order-1 Markov chain, mask and uniform source: the best any teacher can be.

For the ``markov`` benchmark the true posterior of a masked position given the visible tokens
is computable. With the nearest visible token ``u`` at position ``a < i`` and ``w`` at ``b > i``,

    p(x_i = v | visible) ∝ (P^(i-a))[u, v] * (P^(b-i))[v, w],

where ``P`` is the transition matrix; a side without a visible token contributes the stationary
distribution ``pi`` (left) or 1 (right). The chain is Markov, so tokens beyond the nearest
visible neighbours carry no further information. This is exactly the per-position marginal a
perfectly trained mask-source denoiser outputs (it ignores t, like the teacher).

Sampling it with the finite-step sampler isolates the *sampler's* error from the model's: the
S-step score of this oracle is what a perfect teacher would reach at S steps, and what a
student trained on the marginal-exact (probability-mixture) target converges to. A few-step
sampler that beats it must deviate from the true marginals on purpose (DESIGN.md section 3).

With the uniform source every position is observed through noise: ``x_t^i = x_1^i`` with
probability ``kappa(t)``, else a uniform draw, so the emission is

    p(x_t^i = o | x_1^i = v) = kappa(t) [o = v] + (1 - kappa(t)) / V,

and the chain plus these emissions is a hidden Markov model. Its exact per-position posterior
is one forward-backward pass (:class:`MarkovUniformOracleDenoiser`, ``O(L V^2)`` per row).

Both oracles also *sample* the clean sequence from its exact joint posterior,
``x_1 ~ p(x_1 | x_t)`` (:meth:`sample_clean`, forward filtering then backward sampling). The
per-position posteriors above are this law's marginals; a factorised sampler draws from their
product instead and loses every correlation between positions. The joint draw is what an exact
midpoint jump needs (``tsdfm.shaping.midpoints``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tsdfm.data.markov import MarkovChain
from tsdfm.errors import TsdfmError
from tsdfm.flow.rng import categorical
from tsdfm.flow.scheduler import Scheduler


def _require_order_one(chain: MarkovChain) -> None:
    if chain.order != 1:
        raise TsdfmError(
            f"the exact denoiser is implemented for order-1 chains; this one has order "
            f"{chain.order}"
        )


def forward_filter(stationary: Tensor, transition: Tensor, emit: Tensor) -> Tensor:
    """Normalised forward messages ``alpha [B, L, V]`` (float64) of the chain through ``emit``.

    ``alpha_0 ∝ pi * e_0``, ``alpha_i ∝ (alpha_{i-1} P) * e_i``: the filtered law of ``x_1^i``
    given the observations at positions ``0..i``. Normalising every position keeps L = 64 and
    sharp chains from underflowing.
    """
    B, L, V = emit.shape
    alpha = torch.empty(B, L, V, dtype=torch.float64, device=emit.device)
    a = stationary * emit[:, 0]
    alpha[:, 0] = a / a.sum(-1, keepdim=True)
    for i in range(1, L):
        a = (alpha[:, i - 1] @ transition) * emit[:, i]
        alpha[:, i] = a / a.sum(-1, keepdim=True)
    return alpha


def backward_sample(alpha: Tensor, transition: Tensor, generator: torch.Generator) -> Tensor:
    """One joint draw ``x [B, L]`` from the posterior whose forward messages are ``alpha``.

    ``x^{L-1} ~ alpha_{L-1}``, then ``p(x^i = v | x^{i+1} = w, obs) ∝ alpha_i(v) P[v, w]`` right
    to left: exact for a hidden Markov chain (forward filtering, backward sampling). Exactly
    one categorical draw of V uniforms per position, so the generator advances by ``B L V``.
    """
    B, L, _ = alpha.shape
    x = torch.empty(B, L, dtype=torch.long, device=alpha.device)
    x[:, L - 1] = categorical(alpha[:, L - 1].clamp_min(1e-300).log(), generator)
    for i in range(L - 2, -1, -1):
        w = alpha[:, i] * transition[:, x[:, i + 1]].T  # [B, V]: alpha_i(v) P[v, x^{i+1}]
        x[:, i] = categorical(w.clamp_min(1e-300).log(), generator)
    return x


class _ChainPosterior(nn.Module):
    """What both exact denoisers share: a chain (``stationary``, ``transition`` buffers) seen
    through a source-specific ``emission(x, t) [B, L, V]``, and the joint posterior draw."""

    @torch.no_grad()
    def sample_clean(
        self, x: Tensor, t: Tensor | None = None, *, generator: torch.Generator
    ) -> Tensor:
        """One joint draw ``x_1 ~ p(x_1 | x_t) [B, L]`` (forward filtering, backward sampling)."""
        alpha = forward_filter(self.stationary, self.transition, self.emission(x, t))
        return backward_sample(alpha, self.transition, generator)


class MarkovOracleDenoiser(_ChainPosterior):
    """``forward(x [B, L], t, dt) -> logits [B, L, V]`` (log of the exact posterior)."""

    def __init__(self, chain: MarkovChain, max_len: int):
        super().__init__()
        _require_order_one(chain)
        V = chain.vocab_size
        self.vocab_size, self.mask_id, self.max_len = V, V, max_len
        P = chain.transition.astype(np.float64)
        powers = np.empty((max_len + 1, V, V))
        powers[0] = np.eye(V)
        for d in range(1, max_len + 1):
            powers[d] = powers[d - 1] @ P
        self.register_buffer("powers", torch.from_numpy(powers), persistent=False)
        self.register_buffer(
            "stationary", torch.from_numpy(chain.stationary.astype(np.float64)), persistent=False
        )

    def emission(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """``p(x_t^i | x_1^i = v)`` up to a constant ``[B, L, V]``: one-hot where visible, 1 at
        ``[MASK]`` (a masked position says nothing about its token)."""
        visible = (x != self.mask_id)[..., None]
        hit = torch.nn.functional.one_hot(x.clamp(max=self.vocab_size - 1), self.vocab_size)
        return torch.where(
            visible, hit.to(torch.float64), torch.ones_like(hit, dtype=torch.float64)
        )

    @property
    def transition(self) -> Tensor:
        return self.powers[1]

    def forward(self, x: Tensor, t: Tensor | None = None, dt: Tensor | None = None) -> Tensor:
        B, L = x.shape
        if L > self.max_len:
            raise TsdfmError(f"sequence length {L} exceeds the oracle's max_len {self.max_len}")
        visible = x != self.mask_id
        pos = torch.arange(L, device=x.device).expand(B, L)
        # nearest visible position at or left of i (-1: none) and at or right of i (L: none)
        left = torch.where(visible, pos, torch.full_like(pos, -1)).cummax(dim=1).values
        right_rev = torch.where(visible, L - 1 - pos, torch.full_like(pos, -1))
        right = L - 1 - right_rev.flip(1).cummax(dim=1).values.flip(1)
        tok = x.clamp(max=self.vocab_size - 1)

        has_left = left >= 0
        u = tok.gather(1, left.clamp(min=0))
        d_left = (pos - left).clamp(min=0, max=self.max_len)
        left_term = self.powers[d_left, u]  # [B, L, V]: P^(i-a)[u, :]
        left_term = torch.where(has_left[..., None], left_term, self.stationary.expand(B, L, -1))

        has_right = right <= L - 1
        w = tok.gather(1, right.clamp(max=L - 1))
        d_right = (right - pos).clamp(min=0, max=self.max_len)
        right_term = self.powers[d_right, :, w]  # [B, L, V]: P^(b-i)[:, w]
        right_term = torch.where(has_right[..., None], right_term, torch.ones_like(right_term))

        post = left_term * right_term
        post = post / post.sum(-1, keepdim=True)
        # visible positions: a point mass on their token (the sampler never moves them anyway)
        point = torch.nn.functional.one_hot(tok, self.vocab_size).to(post.dtype)
        post = torch.where(visible[..., None], point, post)
        return post.clamp_min(1e-300).log().to(torch.float32)


class MarkovUniformOracleDenoiser(_ChainPosterior):
    """``forward(x [B, L], t [B], dt) -> logits [B, L, V]``: the exact uniform-source posterior.

    Forward-backward on the chain with the emission of the module doc, normalised at every
    position (float64) so that L = 64 and sharp chains cannot underflow:

        alpha_0 = pi * e_0,   alpha_i = (alpha_{i-1} P) * e_i,
        beta_{L-1} = 1,       beta_i = P (e_{i+1} * beta_{i+1}),
        p(x_1^i = v | x_t) ∝ alpha_i(v) beta_i(v).

    At ``kappa = 0`` this is the chain's marginal (stationary at every position), at
    ``kappa = 1`` a point mass on ``x_t``. Unlike the mask oracle it needs ``t``, as a
    uniform-source teacher does.
    """

    def __init__(self, chain: MarkovChain, max_len: int, scheduler: Scheduler):
        super().__init__()
        _require_order_one(chain)
        self.vocab_size, self.max_len, self.scheduler = chain.vocab_size, max_len, scheduler
        # No [MASK] with the uniform source; the sampler's ``mask_id`` is the vocabulary size.
        self.mask_id = chain.vocab_size
        P = torch.from_numpy(chain.transition.astype(np.float64))
        self.register_buffer("transition", P, persistent=False)
        self.register_buffer(
            "stationary", torch.from_numpy(chain.stationary.astype(np.float64)), persistent=False
        )

    def emission(self, x: Tensor, t: Tensor | None) -> Tensor:
        """``p(x_t^i = o | x_1^i = v) = kappa(t) [o = v] + (1 - kappa(t)) / V`` as ``[B, L, V]``."""
        if t is None:
            raise TsdfmError("the uniform-source exact denoiser needs t (it sets the noise level)")
        B, L = x.shape
        if L > self.max_len:
            raise TsdfmError(f"sequence length {L} exceeds the oracle's max_len {self.max_len}")
        if x.numel() and int(x.max()) >= self.vocab_size:
            raise TsdfmError("the uniform source has no [MASK]: ids must lie in [0, V)")
        V = self.vocab_size
        kappa = self.scheduler.kappa(t.to(torch.float64).reshape(-1)).expand(B)
        hit = torch.nn.functional.one_hot(x, V).to(torch.float64)
        return kappa[:, None, None] * hit + ((1.0 - kappa) / V)[:, None, None]

    def forward(self, x: Tensor, t: Tensor | None = None, dt: Tensor | None = None) -> Tensor:
        emit = self.emission(x, t)
        P = self.transition
        alpha = forward_filter(self.stationary, P, emit)
        beta = torch.ones_like(alpha)
        for i in range(x.shape[1] - 2, -1, -1):
            b = (emit[:, i + 1] * beta[:, i + 1]) @ P.T
            beta[:, i] = b / b.sum(-1, keepdim=True)
        post = alpha * beta
        post = post / post.sum(-1, keepdim=True)
        return post.clamp_min(1e-300).log().to(torch.float32)


def load_markov_oracle(data_dir: str | Path) -> tuple[MarkovChain, MarkovOracleDenoiser, int]:
    """``(chain, exact denoiser, seq_len)`` of a prepared ``markov`` corpus; a clear error for
    any other corpus (only a known chain has an exact posterior)."""
    from tsdfm.data import load_prepared

    data = load_prepared(Path(data_dir))
    chain = data.chain()
    if chain is None:
        raise TsdfmError(f"{data_dir} is not a markov corpus (the exact denoiser needs one)")
    return chain, MarkovOracleDenoiser(chain, data.seq_len), data.seq_len


__all__ = [
    "MarkovOracleDenoiser",
    "MarkovUniformOracleDenoiser",
    "backward_sample",
    "forward_filter",
    "load_markov_oracle",
]
