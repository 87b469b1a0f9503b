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
import torch.nn.functional as F
from torch import Tensor, nn

from tsdfm.config.schema import CHAIN_FEATURES


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
# What the chain's transitions read (CHAIN_FEATURES): the head's features ("last", the first
# design), the last block's input ("penultimate"), or the head's features where the step can
# change a token and the last block's input elsewhere ("changeable"). The codes run along the
# whole row, so whatever they read must be computed at every position each sampling step; with
# "penultimate" the last block and the head run only where tokens move, as for a product
# student, with "changeable" (mask source) the last block runs at the masked positions
# (docs/mixture.md, Cost).
# Size of the fresh per-code offsets relative to the (layer-normalised, unit-scale) features
# they are added to: ``delta_z(h)`` has per-dimension scale CHAIN_INIT_SCALE (weights of std
# CHAIN_INIT_SCALE / sqrt(dim)). The codes must start apart: with identical codes every code
# gets the same gradient, and near-identical ones separate only as fast as the correlation
# term's second-order pull, which the per-sample noise of one composed draw buries. On the
# L = 2 chain of tests/test_mixture.py at lr 3e-4 (batch 32, K = 8), per-dimension scales
# 0.08 / 0.15 / 0.3 / 0.6 / 1.2 reached the composed step's correlation after > 1,200 / 800 /
# 600 / 400 / < 400 steps.
CHAIN_INIT_SCALE = 0.5
# Rows x K^2 up to which the code chain is drawn by the parallel scan, above it by the loop
# (LatentChain.draw_codes; markov students, L = 64, one CPU thread, median of 81 interleaved
# draws of the weighted draw, ms scan / loop: K = 32 batch 4 2.0 / 3.5, batch 8 3.7 / 3.5;
# K = 64 batch 1 0.6 / 2.1, batch 2 1.1 / 2.2, batch 4 7.0 / 3.7).
SCAN_MAX_WORK = 8192
# The smallest lower bound on a row's total weight the weighted code draw accepts
# (LatentChain._draw_weights): float32 products stay normal, and any lost subnormal term is
# below 1e-18 of its row.
WEIGHT_FLOOR = 1e-20


class LatentChain(nn.Module):
    """The head of a chain student: a Markov chain of codes along the positions, read by the
    output layer.

    **Why a chain, not one code per sample.** A step of ``n`` positions whose pairs of close
    positions each need their own correlation (a Markov chain's adjacent tokens, committed in
    the same step) has a total correlation that grows with ``n``; a mixture of ``K`` products
    over one shared code carries at most ``I(z; y) <= log K`` nats of it, whatever the network.
    Here each position ``i`` has its own code ``z_i`` and the codes form a Markov chain:

        P(z_i = b | z_{i-1} = a) = softmax_b(A_ab + u_i(b)),   u_i = W g_i,
        s_{z,i} = softmax(head(h_i + (U h_i) * c_z + e_z)),

    a static pairwise table ``A`` plus a per-position, per-code term ``u_i`` read off the
    transition features ``g`` (``z_0`` drawn from ``softmax(u_0)``; ``g = h``, the head's
    features, or with ``features="penultimate"`` the last block's input, layer-normalised,
    so that sampling needs the last block only where tokens move, or with
    ``features="changeable"`` the head's features where the step can change a token and the
    last block's input elsewhere), and per-code offsets: a code embedding
    ``e_z`` plus a code-scaled projection of the features. Given the codes the step is a
    product; over them it is a mixture of ``K^L`` products in which positions ``i`` and ``j``
    are correlated through the codes between them, up to ``log K`` nats per *pair of
    neighbours*. With ``K`` at least the vocabulary the chain can carry a token chain outright
    (code = token, ``A`` its transition matrix), which is why ``K`` matters (docs/mixture.md).
    The per-sample mixture is the chain that never moves.

    **Exact likelihood.** Positions are conditionally independent given the codes and the codes
    form a chain, so ``log P(y)`` is the forward algorithm of a hidden Markov model, exact, in
    ``O(L K^2)`` (``tsdfm.training.mixture.chain_losses``).

    **Sampling** costs one network pass: the codes are drawn along the row from uniform noise
    ``u [B, L]`` (inverse CDF on each row's weights ``exp(A_a) * exp(u_i)``, by a parallel scan
    for few rows or one position at a time, :meth:`draw_codes`) after the body has run, then one
    head call at the drawn codes. The noise comes from the caller's generator
    (:func:`draw_model_latent`), so a seed still fixes every sample.
    """

    def __init__(self, dim: int, codes: int, features: str = "last"):
        super().__init__()
        if features not in CHAIN_FEATURES:
            raise ValueError(f"chain features must be one of {CHAIN_FEATURES}, got {features!r}")
        self.codes = codes
        self.features = features
        self.project = nn.Linear(dim, dim, bias=False)
        self.scale = nn.Parameter(torch.randn(codes, dim) * CHAIN_INIT_SCALE / math.sqrt(2))
        self.shift = nn.Parameter(torch.randn(codes, dim) * CHAIN_INIT_SCALE / math.sqrt(2))
        self.unary = nn.Linear(dim, codes)
        stay = math.log(CHAIN_INIT_STAY * (codes - 1) / (1 - CHAIN_INIT_STAY))
        self.pairwise = nn.Parameter(torch.eye(codes) * stay)
        nn.init.normal_(self.project.weight, std=1 / math.sqrt(dim))
        nn.init.zeros_(self.unary.weight)
        nn.init.zeros_(self.unary.bias)

    @property
    def reads_last(self) -> bool:
        """True when the transitions read the head's own features at every position (the
        default), False when they read the last block's input somewhere (``penultimate``
        everywhere, ``changeable`` where the step cannot change a token)."""
        return self.features == "last"

    def transition_features(
        self, before_last: Tensor, head_features: Tensor | None, changeable: Tensor | None = None
    ) -> Tensor:
        """``g``, what the transitions read: the head's features, or the last block's input
        layer-normalised (no affine: ``unary`` after it is the whole read-out), or
        (``changeable``) the head's features at the positions ``changeable [B, L]`` marks and
        the last block's input elsewhere.

        Why ``changeable``: a chain's codes matter for the likelihood only where the step can
        change a token (a visible mask-source token has ``l = 1`` whatever its code), and there
        the transitions read what the head reads, as with ``last``; a visible position only
        relays the chain, and its own token is already in the last block's input. On the mask
        source the last block then runs at the masked positions only, about 56% of them over
        8 steps, where ``last`` runs it at all of them (docs/mixture.md, Cost)."""
        if self.reads_last:
            return head_features
        before = self.relay_features(before_last)
        if self.features == "penultimate":
            return before
        if changeable is None or changeable.shape != before.shape[:2]:
            raise ValueError("chain_features=changeable needs the changeable positions [B, L]")
        return torch.where(changeable.unsqueeze(-1), head_features, before)

    @staticmethod
    def relay_features(before_last: Tensor) -> Tensor:
        """What the transitions read from the last block's input: the input layer-normalised."""
        return F.layer_norm(before_last, before_last.shape[-1:])

    def log_transitions(self, g: Tensor) -> Tensor:
        """``log P(z_i = b | z_{i-1} = a)`` ``[B, L, K, K]`` from the transition features ``g``;
        at ``i = 0`` every row is the law of ``z_0`` (a uniform virtual ``z_{-1}`` before it
        gives the same chain)."""
        unary = self.unary(g).float()
        pair = self.pairwise.float().expand(*g.shape[:2], -1, -1).clone()
        pair[:, 0] = 0.0
        return torch.log_softmax(pair + unary.unsqueeze(-2), dim=-1)

    def all_offsets(self, h: Tensor) -> Tensor:
        """``(U h_i) * c_z + e_z`` for every code: ``[..., K, dim]`` for features ``[..., dim]``
        (``[B, L, dim]``, or ``[N, dim]`` at chosen positions)."""
        return self.project(h).unsqueeze(-2) * self.scale + self.shift

    @torch.no_grad()  # integer codes: nothing to differentiate
    def draw_codes(self, h: Tensor, u: Tensor) -> Tensor:
        """The code chain ``[B, L]`` (int64) for the noise ``u [B, L]`` in [0, 1), from the
        transition features ``h`` (``g`` above).

        Inverse-CDF sampling, ``z_i = f_i(z_{i-1})`` with ``f_i(a) = #{b : C_i(a, b) <= u_i
        C_i(a, K-1)}``, ``C_i(a, .)`` the cumulative sum of the row's weights (the transition
        law up to its normaliser, :meth:`_draw_weights`). Two exact ways, the same codes
        (tested): one position at a time (``L`` rounds of a few ``[B, K]`` operations), or,
        since ``u_i`` fixes every map ``f_i`` before any code is known, all ``L`` maps at once
        (``[B, L, K, K]`` work) composed by a parallel prefix scan (``F_i = f_i o F_{i-1}`` in
        ``log2 L`` rounds of gathers). The scan wins when the per-operation overhead dominates
        (few rows), the loop when the ``K^2`` work does (``SCAN_MAX_WORK``)."""
        if u.shape != h.shape[:2] or not u.is_floating_point():
            raise ValueError(
                f"a chain student's latent is uniform noise of shape {tuple(h.shape[:2])}, "
                f"got {tuple(u.shape)} {u.dtype}"
            )
        pair, weights = self._draw_weights(h)
        if h.shape[0] * self.codes**2 > SCAN_MAX_WORK:
            return self._draw_sequential(h, u.float(), pair, weights)
        if pair is None:
            cdf = self.log_transitions(h).exp().cumsum(-1)
        else:
            table = pair * weights.unsqueeze(-2)  # [B, L, K, K]
            table[:, 0] = weights[:, 0].unsqueeze(-2)  # z_0's law, whatever the virtual z_{-1}
            cdf = table.cumsum(-1)
        maps = _inverse_cdf(cdf, u.float()[:, :, None, None])  # [B, L, K]: f_i(a)
        shift = 1
        while shift < maps.shape[1]:  # Hillis-Steele: maps[i] <- maps[i] o maps[i - shift]
            composed = maps[:, shift:].gather(2, maps[:, :-shift])
            maps = torch.cat([maps[:, :shift], composed], dim=1)
            shift *= 2
        return maps[:, :, 0]

    @torch.no_grad()
    def draw_codes_sequential(self, h: Tensor, u: Tensor) -> Tensor:
        """:meth:`draw_codes` one position at a time."""
        return self._draw_sequential(h, u.float(), *self._draw_weights(h))

    def _draw_sequential(
        self, h: Tensor, u: Tensor, pair: Tensor | None, weights: Tensor
    ) -> Tensor:
        cdf = self.log_transitions(h).exp().cumsum(-1) if pair is None else None
        codes = torch.empty(h.shape[:2], dtype=torch.long, device=h.device)
        rows = torch.arange(h.shape[0], device=h.device)
        for i in range(h.shape[1]):
            if cdf is not None:
                row = cdf[:, 0, 0] if i == 0 else cdf[rows, i, codes[:, i - 1]]
            elif i == 0:
                row = weights[:, 0].cumsum(-1)
            else:
                row = (pair[codes[:, i - 1]] * weights[:, i]).cumsum(-1)
            codes[:, i] = _inverse_cdf(row, u[:, i, None])
        return codes

    @torch.no_grad()
    def _draw_weights(self, h: Tensor) -> tuple[Tensor | None, Tensor]:
        """``(exp(A_ab - max_b A_ab) [K, K], exp(u_i(b) - max_b u_i(b)) [B, L, K])``: the
        transition law ``P(z_i = b | z_{i-1} = a)`` up to a per-row factor, as a static table
        times a per-position vector. Why: ``exp`` of ``K^2 + L K`` numbers and one product,
        where the normalised law (:meth:`log_transitions`) takes a log-softmax and an ``exp``
        over all ``L K^2`` entries, most of a batch-1 draw's time. Each factor is in (0, 1], so
        a row's total is at least ``max_b (min_a A'_ab) u'_i(b)``; where that bound falls below
        ``WEIGHT_FLOOR`` (the maxima of ``A`` and ``u_i`` tens of nats apart, so float32
        products could underflow) the table is None and the caller draws from the normalised
        law instead (the same law)."""
        unary = self.unary(h).float()
        weights = (unary - unary.amax(-1, keepdim=True)).exp()
        pair = self.pairwise.float()
        pair = (pair - pair.amax(-1, keepdim=True)).exp()
        if float((weights * pair.amin(0)).amax(-1).min()) < WEIGHT_FLOOR:
            return None, weights
        return pair, weights

    def forward(self, h: Tensor, u: Tensor, g: Tensor | None = None) -> Tensor:
        """``h_i + delta_{z_i}(h_i)`` ``[B, L, dim]`` at the codes drawn from ``u`` (through
        the transition features ``g``, default ``h``)."""
        return self.offset(h, self.draw_codes(h if g is None else g, u))

    def offset(self, h: Tensor, codes: Tensor) -> Tensor:
        """``h + delta_z(h)`` at the given codes (same leading shape as ``h[..., 0]``): the
        head's input. Used at every position, or only where the sampler moves a token (the
        codes are drawn along the whole row first, :meth:`Denoiser._chain_at`)."""
        return h + self.project(h) * self.scale[codes].to(h.dtype) + self.shift[codes].to(h.dtype)


def _inverse_cdf(cdf: Tensor, u: Tensor) -> Tensor:
    """The code each row draws from uniform ``u [..., 1]``: ``#{b : cdf[..., b] <= u
    cdf[..., -1]}`` for rows ``cdf [..., K]``, cumulative sums of non-negative weights (so
    non-decreasing, total at the end), clamped to ``K - 1``. A binary search (``log K``
    comparisons per row instead of ``K``; 2.7x faster on a scan's ``[1, 64, 64, 64]``)."""
    cdf = cdf.contiguous()
    threshold = (u * cdf[..., -1:]).expand(*cdf.shape[:-1], 1).contiguous()
    return torch.searchsorted(cdf, threshold, right=True)[..., 0].clamp_(max=cdf.shape[-1] - 1)


__all__ = [
    "LatentChain",
    "draw_latent",
    "draw_model_latent",
    "latent_chain_of",
    "latent_codes_of",
]
