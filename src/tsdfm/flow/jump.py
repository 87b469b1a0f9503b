"""One finite step t -> t + h of the mixture-path CTMC, with the denoiser frozen over the step.

Exact rule (the default, ``jump_rule="exact"``). On the mixture path the velocity is
``u(y) = rate(t) * (p(y) - delta(y == x))`` with ``rate = kappa'/(1 - kappa)``. Holding
the denoiser ``p`` fixed over the step, this CTMC is solved exactly: a position that has
not yet "switched" switches in ``[t, t+h]`` with probability::

    q(t, h) = (kappa(t+h) - kappa(t)) / (1 - kappa(t))  =  1 - exp(-h * alpha)

where ``alpha = ln[(1 - kappa(t)) / (1 - kappa(t+h))] / h`` is FS-DFM's cumulative scalar,
and a switching position lands on a fresh draw from ``p`` (which may equal ``x`` again).
So::

    P(x -> y) = (1 - q) * delta(y == x) + q * p(y)

With the true denoiser this keeps the path's marginals exact for any step size (it is the
same "stay with prob 1-q, else resample from p" structure as the path itself). For the
mask source only ``[MASK]`` positions may switch (``p`` never predicts ``[MASK]``), so a
masked position unmasks with probability exactly ``q`` and unmasked ones never change.
For the uniform source every position may switch and ``P(leave x) = q * (1 - p(x))``.

First-jump rule (``jump_rule="first_jump"``, DESIGN section 2 / FS-DFM): leave with
probability ``1 - exp(-h * alpha * (1 - p(x)))`` and land on ``p`` restricted to
``y != x`` (renormalised). It accounts only for the *first* jump of the CTMC, so for the
uniform source it is not marginal-exact: with ``h = 1`` from ``t = 0`` it always leaves
``x0`` (``alpha = inf``), which under-weights tokens that the source already shows.
For the mask source (``p(x) = 0`` at ``[MASK]``) both rules coincide.

Randomness: every call draws one float64 uniform per position (the switch); the exact rule
then draws a float64 Gumbel landing token for the switching positions only (which ones switch
depends on u, q, x and the clamp, never on the model's output, so forward caching cannot change
the stream), the first-jump rule one per position. A seed fixes the whole trajectory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tsdfm.errors import TsdfmError
from tsdfm.flow.path import check_source
from tsdfm.flow.rng import categorical, uniform
from tsdfm.flow.scheduler import Scheduler

JUMP_RULES = ("exact", "first_jump")
# t + h within this of 1 is treated as exactly 1 (a float32 grid may sum to 0.99999994).
END_SNAP = 1e-6

_F64 = torch.float64


def switch_probability(
    t: Tensor | float, h: Tensor | float, scheduler: Scheduler, device=None
) -> Tensor:
    """``q(t, h) = (kappa(t+h) - kappa(t)) / (1 - kappa(t))`` in float64, clamped to [0, 1].

    ``t`` and ``h`` are Python floats or tensors (scalar or ``[B]``). When ``t + h`` reaches
    1 (within :data:`END_SNAP`) and ``h > 0``, ``q = 1`` exactly: the last step lands every
    position on the data side, with no ``0/0`` when ``kappa(t) = 1``.
    """
    t = torch.as_tensor(t, dtype=_F64, device=device)
    h = torch.as_tensor(h, dtype=_F64, device=device)
    t_next = (t + h).clamp(max=1.0)
    at_end = (t_next >= 1.0 - END_SNAP) & (h > 0)
    t_next = torch.where(at_end, torch.ones_like(t_next), t_next)
    k0 = scheduler.kappa(t)
    k1 = scheduler.kappa(t_next)
    q = (k1 - k0) / (1.0 - k0).clamp_min(torch.finfo(_F64).tiny)
    q = torch.where(at_end, torch.ones_like(q), q)
    return q.clamp(0.0, 1.0)


def _prob_of_current(log_p: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``p(x)`` per position (0 where ``x`` is outside the classes, e.g. ``[MASK]``).

    Returns ``(p_x, in_classes, safe_x)`` with ``safe_x`` a valid gather index.
    """
    num_classes = log_p.shape[-1]
    in_classes = (x >= 0) & (x < num_classes)
    safe_x = torch.where(in_classes, x, torch.zeros_like(x))
    p_x = log_p.gather(-1, safe_x.unsqueeze(-1)).squeeze(-1).exp()
    return torch.where(in_classes, p_x, torch.zeros_like(p_x)), in_classes, safe_x


def draw_switches(
    x: Tensor,
    t: Tensor | float,
    h: Tensor | float,
    scheduler: Scheduler,
    source: str,
    mask_id: int,
    generator: torch.Generator,
    clamp: Tensor | None = None,
) -> Tensor:
    """The exact rule's first half: which positions of ``x [B, L]`` switch in ``[t, t + h]``.

    One float64 uniform per position, ``switch = u < q(t, h)``; for the mask source only
    ``[MASK]`` positions may switch, and clamped ones never do. The denoiser plays no part,
    so a sampler may call this *before* the model and ask for logits at the switching
    positions only (:func:`land` then draws there): the same random numbers in the same order
    as :func:`jump`, hence the same samples.
    """
    q = switch_probability(t, h, scheduler, x.device)
    if q.dim() == 1:
        q = q[:, None]
    switch = uniform(x.shape, generator, x.device) < q
    if source == "mask":
        switch &= x == mask_id
    if clamp is not None:
        switch &= ~clamp.to(device=x.device, dtype=torch.bool)
    return switch


def land(x: Tensor, switch: Tensor, logits_at: Tensor, generator: torch.Generator) -> Tensor:
    """The exact rule's second half: new ids, with a float64 Gumbel-max draw from
    ``logits_at [N, V]`` (the denoiser's filtered logits at ``x[switch]``, row-major order) at
    each switching position (a draw may return the current token); the rest unchanged."""
    out = x.clone()
    if logits_at.shape[0]:
        out[switch] = categorical(logits_at.to(_F64), generator)
    return out


def jump(
    x: Tensor,
    logits: Tensor,
    t: Tensor | float,
    h: Tensor | float,
    scheduler: Scheduler,
    source: str,
    mask_id: int,
    generator: torch.Generator,
    jump_rule: str = "exact",
    clamp: Tensor | None = None,
) -> Tensor:
    """Move ``x [B, L]`` from ``t`` to ``t + h`` with denoiser ``logits [B, L, V]`` (see module doc).

    ``t`` and ``h`` are floats or per-row ``[B]`` tensors (then ``q`` is ``[B, 1]``).
    Positions where ``clamp [B, L]`` is True never change. Logits of any dtype are turned
    into float64 log-probabilities here. Returns the new ids (a new LongTensor).
    """
    check_source(source)
    if jump_rule not in JUMP_RULES:
        raise TsdfmError(f"unknown jump_rule {jump_rule!r}; choose one of {', '.join(JUMP_RULES)}")
    if x.dim() != 2 or logits.dim() != 3 or logits.shape[:2] != x.shape:
        raise TsdfmError(
            f"x must be [B, L] and logits [B, L, V]; got {tuple(x.shape)} and {tuple(logits.shape)}"
        )
    if clamp is not None and clamp.shape != x.shape:
        raise TsdfmError(
            f"clamp must have the shape of x {tuple(x.shape)}, got {tuple(clamp.shape)}"
        )

    if jump_rule == "exact":
        # Which positions switch depends on u, q and x only, so it is decided first; landing
        # tokens are then drawn for the switching positions alone. A 1,024-step sampler moves
        # about L tokens in total, so drawing a [B, L, V] Gumbel tensor every step would cost
        # far more than the model's cached forward passes.
        switch = draw_switches(x, t, h, scheduler, source, mask_id, generator, clamp)
        return land(x, switch, logits[switch], generator)

    q = switch_probability(t, h, scheduler, x.device)
    if q.dim() == 1:
        q = q[:, None]
    u = uniform(x.shape, generator, x.device)
    log_p = torch.log_softmax(logits.to(_F64), dim=-1)
    p_x, in_classes, safe_x = _prob_of_current(log_p, x)
    # h * alpha = -log(1 - q); leave = 1 - exp(-h alpha (1 - p(x))). Guard 0 * inf at q = 1.
    exponent = (1.0 - p_x) * torch.log1p(-q)
    leave = torch.where(p_x < 1.0, -torch.expm1(exponent), torch.zeros_like(p_x))
    current = torch.zeros_like(log_p, dtype=torch.bool).scatter_(-1, safe_x.unsqueeze(-1), True)
    y = categorical(log_p.masked_fill(current & in_classes.unsqueeze(-1), float("-inf")), generator)
    switch = u < leave

    if source == "mask":
        switch &= x == mask_id
    if clamp is not None:
        switch &= ~clamp.to(device=x.device, dtype=torch.bool)
    return torch.where(switch, y, x)
