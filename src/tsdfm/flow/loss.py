"""Training losses for the denoiser ``p(x1 | x_t, t) = softmax(logits)``.

Both losses are averaged over the positions selected by ``weights`` (bool mask, or
non-negative float weights giving a weighted mean; ``None`` = every position) and are
computed in float32 whatever the logits' dtype, so bf16 training does not lose the tail
of the log-probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tsdfm.errors import TsdfmError
from tsdfm.flow.scheduler import Scheduler

# 1 - kappa(t) is clamped to at least this, so the rate kappa'/(1 - kappa) stays finite at t -> 1.
ONE_MINUS_KAPPA_MIN = 1e-4


def _check_shapes(logits: Tensor, x1: Tensor) -> None:
    if logits.dim() != 3 or x1.shape != logits.shape[:2]:
        raise TsdfmError(
            f"logits must be [B, L, V] and x1 [B, L]; got {tuple(logits.shape)} and "
            f"{tuple(x1.shape)}"
        )


def _weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of ``values [B, L]`` over the positions ``weights`` selects (0 if none)."""
    if weights is None:
        return values.mean()
    if weights.shape != values.shape:
        raise TsdfmError(
            f"weights must have the shape of x1 {tuple(values.shape)}, got {tuple(weights.shape)}"
        )
    w = weights.to(values.device, torch.float32)
    # Multiply (not index) so positions with weight 0 cannot leak a NaN/inf into the sum.
    total = torch.where(w > 0, values * w, torch.zeros_like(values)).sum()
    return total / w.sum().clamp_min(torch.finfo(torch.float32).tiny)


def cross_entropy(logits: Tensor, x1: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean ``-log p(x1[i] | x_t, t)`` over the selected positions (DESIGN section 2)."""
    _check_shapes(logits, x1)
    ce = F.cross_entropy(logits.float().transpose(1, 2), x1, reduction="none")
    return _weighted_mean(ce, weights)


def generalized_kl(
    logits: Tensor,
    x1: Tensor,
    x_t: Tensor,
    t: Tensor,
    scheduler: Scheduler,
    weights: Tensor | None = None,
) -> Tensor:
    """Generalized KL between the true and the predicted velocity of the mixture path.

    Gat et al. 2024 / Shaul et al.: with ``rate = kappa'(t) / (1 - kappa(t))`` the true
    velocity at a position is ``rate * (delta(y == x1) - delta(y == x_t))`` and the model's
    is ``rate * (p(y) - delta(y == x_t))``. Their Bregman divergence
    ``sum_{y != x_t} u log(u / v) - u + v`` reduces, per position, to::

        -rate * (p(x_t) - delta(x1 == x_t) + (1 - delta(x1 == x_t)) * log p(x1))

    which is >= 0 and zero only when ``p = delta(x1)``. For the mask source ``x_t`` may be
    ``[MASK]``, which is outside the classes: then ``p(x_t) = 0``. ``1 - kappa`` is clamped
    at :data:`ONE_MINUS_KAPPA_MIN`; ``t`` is ``[B]`` (or a scalar).
    """
    _check_shapes(logits, x1)
    if x_t.shape != x1.shape:
        raise TsdfmError(f"x_t must have the shape of x1 {tuple(x1.shape)}, got {tuple(x_t.shape)}")
    num_classes = logits.shape[-1]
    log_p = torch.log_softmax(logits.float(), dim=-1)
    log_p_x1 = log_p.gather(-1, x1.unsqueeze(-1)).squeeze(-1)
    in_classes = (x_t >= 0) & (x_t < num_classes)
    safe_xt = torch.where(in_classes, x_t, torch.zeros_like(x_t))
    p_xt = torch.where(in_classes, log_p.gather(-1, safe_xt.unsqueeze(-1)).squeeze(-1).exp(), 0.0)
    same = (x1 == x_t).float()
    # Keep log p(x1) out of the sum where x1 == x_t: it may be -inf there (0 * -inf = NaN).
    log_term = torch.where(x1 == x_t, torch.zeros_like(log_p_x1), log_p_x1)

    t64 = torch.as_tensor(t, device=logits.device, dtype=torch.float64)
    one_minus = (1.0 - scheduler.kappa(t64)).clamp_min(ONE_MINUS_KAPPA_MIN)
    rate = (scheduler.d_kappa(t64) / one_minus).to(torch.float32)
    if rate.dim() == 1:
        rate = rate[:, None]
    per_position = -rate * (p_xt - same + log_term)
    return _weighted_mean(per_position, weights)
