"""The mixture student's objective (``student.kind=mixture``): one step that samples a joint.

**Why a product step is capped.** A product student commits the positions of one step
independently given ``x_t``: its step law is ``P(y | x) = prod_i P_i(y_i | x)``. The law it is
distilled from, the teacher's composed fine steps ``C(y | x)``, is not a product: a position
committed early in the step is read by the later fine steps, so positions committed together
are correlated. The closest product to ``C`` (in ``KL(C || P)``) is the product of ``C``'s own
marginals, and the gap is ``C``'s total correlation ``TC(C) = sum_i H(C_i) - H(C) > 0`` per step,
whatever the training recipe: per-position (marginal) losses see only the ``C_i``. Summed over
``S`` steps the error is of order ``1/S`` (Di4C, arXiv 2410.08709, Theorem 1).

**The mixture step.** The network also takes a latent code ``z`` uniform on ``K`` values
(``latent_codes``; one draw per sample per step, ``tsdfm.models.latent``). Given ``z`` a step is
a product; the step law is the mixture

    P(y | x) = (1/K) sum_z prod_i l_i(y_i | z),   l_i(y_i | z) = (1 - q) [y_i = x_i] + q s_{z,i}(y_i)

over the changeable positions ``i`` (masked ones for the mask source, all for the uniform
source), ``q = q(t, dt)`` the switch probability and ``s_{z,i} = softmax(f(x, t, dt, z))_i``.
Which positions switch is independent of ``z``; the values they land on are correlated through
it. Sampling cost: one forward pass per step and one integer draw per sample per step.

**What the objective optimises.** ``E_y[-log P(y | x)]`` with ``y`` one draw of the composed
law: the end of the two chained half steps that the exact target already draws
(``shortcut_target(..., return_sample=True)``; the anchor's own jump on the ``dt = 1/N`` rows).
In expectation this is ``KL(C || P) + H(C)``: the *joint* law of the student's step is pulled
onto the composition's, and up the step-size chain (``dt``'s target is built from the EMA
student at ``dt / 2``, itself a mixture) the correlations of ever longer compositions reach the
big steps, as in Di4C's consistency loss. Every code is evaluated on every row, so
``log P(y)`` is exact (a log-sum-exp over the ``K`` codes). (A Gaussian latent estimated with a
few draws gives only a lower bound whose bias penalises the spread between draws; on the
L = 2 test chain it kept the draws from separating at all, so the codes are finite.) Variance
is cut as Di4C does (a control variate): the per-position part of ``-log P`` is replaced by its
exact expectation, the KL of the exact per-position target to the student's per-position law
``sbar_i = (1/K) sum_z s_{z,i}``; only the *correlation* part uses the sample:

    loss = mean_i KL(target_i || sbar_i) + w * [-log P(y) + sum_i log lbar_i(y_i)] / n

with ``lbar_i = (1/K) sum_z l_i(y_i | z)`` and ``n`` the number of changeable positions. The
bracket is minus the student's pointwise total correlation at ``y`` (logged as ``mix_pmi``, its
negative, in nats per row: above 0 when the student puts more mass on ``y`` than the product of
its own marginals does). For the mask source ``E_y[-log lbar_i(y_i)] = q CE(target_i, sbar_i) +
const``, so the expected loss is ``(1 - w q) sum_i CE_i / n + w E[-log P(y)] / n + const``:
both parts are minimised by ``P = C``, so the objective is proper for ``0 <= w <= 1``
(``joint_weight``; ``w = 0`` trains the per-position law only and leaves the codes unused).

**Cost.** Training: the targets as for the product student, plus one jump for ``y``; the student's
forward and backward on ``K`` copies of each row, so about ``K`` times the product student's
student-side compute. Sampling: unchanged (one pass per step).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tsdfm.flow import switch_probability
from tsdfm.models.latent import draw_model_latent, latent_chain_of, latent_codes_of
from tsdfm.training.objectives import ShortcutObjective


def step_log_likelihoods(
    logs: Tensor, x: Tensor, y: Tensor, q: Tensor, source: str, mask_id: int, changeable: Tensor
) -> Tensor:
    """``log l_i(y_i | z)`` ``[K, B, L]`` from the student's log-probs ``logs [K, B, L, C]``
    (module doc); 0 at positions that cannot change. ``q [B]`` is the step's switch probability.

    Mask source: ``log q + log s(y_i)`` where ``y_i`` is committed, ``log(1 - q)`` where it stays
    masked. Uniform source: ``logaddexp(log(1 - q) [y_i = x_i], log q + log s(y_i))``."""
    num_classes = logs.shape[-1]
    safe = torch.where(y < num_classes, y, 0)
    landed = logs.gather(-1, safe.expand(logs.shape[0], -1, -1).unsqueeze(-1)).squeeze(-1)
    q = q.to(logs.dtype).view(1, -1, 1)
    log_q, log_stay = q.log(), torch.log1p(-q)
    if source == "mask":
        ll = torch.where(y == mask_id, log_stay.expand_as(landed), log_q + landed)
    else:
        stay = torch.where(y == x, log_stay, torch.full_like(log_stay, float("-inf")))
        ll = torch.logaddexp(stay.expand_as(landed), log_q + landed)
    return torch.where(changeable, ll, torch.zeros_like(ll))


def mixture_losses(
    logits: Tensor,
    target_logp: Tensor,
    x: Tensor,
    y: Tensor,
    q: Tensor,
    changeable: Tensor,
    source: str,
    mask_id: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(marginal, correlation, pmi)`` for a batch under all ``K`` codes (module doc).

    ``logits [K, B, L, C]``: the student on the same rows under each code ``z``;
    ``target_logp [B, L, C]``: the exact per-position target; ``y [B, L]``: one draw of the
    composed step from ``x``; ``q [B]``. ``marginal``: mean over changeable positions of
    ``KL(target || sbar)``; ``correlation``: ``sum_rows [-log P(y) + sum_i log lbar_i(y_i)]``
    over the number of changeable positions; ``pmi``: minus the bracket, mean over rows (no
    gradient)."""
    logs = torch.log_softmax(logits.float(), dim=-1)
    log_m = math.log(logits.shape[0])
    log_sbar = torch.logsumexp(logs, dim=0) - log_m
    ll = step_log_likelihoods(logs, x, y, q, source, mask_id, changeable)  # [K, B, L]
    joint = torch.logsumexp(ll.sum(-1), dim=0) - log_m  # [B]
    product = (torch.logsumexp(ll, dim=0) - log_m).sum(-1)  # [B]
    return _assemble(_kl(target_logp, log_sbar), changeable, joint, product)


def _kl(target_logp: Tensor, log_sbar: Tensor) -> Tensor:
    """``KL(target || sbar)`` per position, over the last (class) dimension."""
    return (target_logp.exp() * (target_logp - log_sbar)).sum(-1)


def _assemble(kl, changeable, joint, product) -> tuple[Tensor, Tensor, Tensor]:
    """``(marginal, correlation, pmi)`` from the per-position ``KL(target || sbar)`` ``kl [B, L]``,
    the joint ``log P(y) [B]`` and ``sum_i log lbar_i(y_i) [B]`` (:func:`mixture_losses`)."""
    w = changeable.float()
    count = w.sum().clamp_min(1.0)
    marginal = (kl * w).sum() / count
    correlation = (product - joint).sum() / count
    return marginal, correlation, (joint - product).detach().mean()


def chain_log_likelihood(
    ll: Tensor, log_trans: Tensor, marginals: bool = True
) -> tuple[Tensor, Tensor | None]:
    """``(log P(y) [B], log pi [B, L, K])`` of a code chain with per-position, per-code
    log-likelihoods ``ll [B, L, K]`` and transitions ``log_trans [B, L, K, K]`` (at position
    0 every row is the law of ``z_0``): the forward algorithm (:func:`chain_losses`) and the codes' prior
    marginals ``pi_i`` (``None`` with ``marginals=False``: they do not depend on ``y``, so a
    second likelihood on the same transitions, the data term's, need not recompute them).

    The positions are split once (``unbind``) rather than indexed in the loop: the backward of
    ``log_trans[:, i]`` zero-fills a gradient of the whole ``[B, L, K, K]`` tensor for each of the
    ``L`` positions, which took 93% of the recursion's time at K = 64 (1.34 s against 0.09 s per
    forward and backward, batch 32, one thread); the values and gradients are bit-identical."""
    steps, lls = log_trans.unbind(1), ll.unbind(1)
    log_pi = [steps[0][:, 0]]  # every row of position 0 is the law of z_0
    alpha = log_pi[0] + lls[0]
    for step, ll_i in zip(steps[1:], lls[1:], strict=True):
        if marginals:
            log_pi.append(torch.logsumexp(log_pi[-1].unsqueeze(-1) + step, dim=1))
        alpha = torch.logsumexp(alpha.unsqueeze(-1) + step, dim=1) + ll_i
    return torch.logsumexp(alpha, dim=-1), torch.stack(log_pi, dim=1) if marginals else None


def chain_losses(
    logits: Tensor,
    log_trans: Tensor,
    target_logp: Tensor,
    x: Tensor,
    y: Tensor,
    q: Tensor,
    changeable: Tensor,
    source: str,
    mask_id: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`mixture_losses` for a chain student (``tsdfm.models.latent.LatentChain``).

    ``logits``: the student under every code, at the changeable positions ``[N, K, C]``
    (``Denoiser.chain_terms(..., positions=changeable)``, the training path) or at every
    position ``[B, L, K, C]`` (the others are not read); ``log_trans [B, L, K, K]``: ``log
    P(z_i = b | z_{i-1} = a)`` (position 0: the law of ``z_0``). The codes' prior marginals
    ``pi_i`` follow the chain, the per-position law is ``sbar_i = sum_z pi_i(z) s_{z,i}``, and
    ``log P(y)`` is the forward algorithm over the codes:

        alpha_0(b) = log P(z_0 = b) + log l_0(y_0 | b),
        alpha_i(b) = logsumexp_a [alpha_{i-1}(a) + log P(b | a)] + log l_i(y_i | b),
        log P(y) = logsumexp_b alpha_{L-1}(b),

    exact, ``O(L K^2)``; a position that cannot change has ``l = 1`` and passes the chain on.
    The losses are the same numbers from either shape of ``logits`` (tested)."""
    at = changeable.nonzero(as_tuple=True)  # once: every gather and scatter below reuses it
    logs = _changeable_log_probs(logits, at)  # [N, K, C]
    ll = _code_log_likelihoods(logs, x, y, q, at, changeable.shape, source, mask_id)  # [B, L, K]
    joint, log_pi = chain_log_likelihood(ll, log_trans)
    log_sbar = torch.logsumexp(log_pi[at].unsqueeze(-1) + logs, dim=1)  # [N, C]
    kl = _scatter(at, changeable.shape, _kl(target_logp[at], log_sbar))  # [B, L]
    product = torch.logsumexp(log_pi + ll, dim=-1).sum(-1)  # sum_i log lbar_i(y_i), [B]
    return _assemble(kl, changeable, joint, product)


def _changeable_log_probs(logits: Tensor, at: tuple[Tensor, Tensor]) -> Tensor:
    """``log_softmax`` of a chain's logits at the changeable positions ``at`` (their
    ``nonzero`` indices), ``[N, K, C]``."""
    if logits.dim() == 4:  # [B, L, K, C] at every position
        logits = logits[at]
    if logits.shape[0] != len(at[0]):
        raise ValueError(
            f"chain logits at {logits.shape[0]} positions, but {len(at[0])} "
            "are changeable: pass chain_terms(..., positions=changeable)"
        )
    return torch.log_softmax(logits.float(), dim=-1)


def _code_log_likelihoods(logs, x, y, q, at, shape, source, mask_id) -> Tensor:
    """``log l_i(y_i | z)`` ``[B, L, K]`` (:func:`step_log_likelihoods`) from the log-probs at
    the changeable positions ``at`` ``logs [N, K, C]``; 0 elsewhere."""
    one = torch.ones(len(at[0]), 1, dtype=torch.bool, device=x.device)
    ll = step_log_likelihoods(
        logs.permute(1, 0, 2).unsqueeze(2), x[at].unsqueeze(-1),
        y[at].unsqueeze(-1), q[at[0]], source, mask_id, one,
    ).squeeze(-1)  # fmt: skip
    return _scatter(at, shape, ll.t())


def _scatter(at: tuple[Tensor, Tensor], shape, values: Tensor) -> Tensor:
    """``values [N, ...]`` placed at the indices ``at`` of a ``shape`` (``[B, L]``) grid, zeros
    elsewhere."""
    return values.new_zeros(*shape, *values.shape[1:]).index_put(at, values)


def data_step(x1: Tensor, x_t: Tensor, q: Tensor, changeable: Tensor, generator) -> Tensor:
    """One draw of the *true* step law from ``x_t`` (Di4C's data term): each changeable
    position lands, with probability ``q``, on its clean token ``x1``.

    Why this is exact: on the mask path ``x_t`` is ``x1`` with positions masked independently,
    so given ``x_t`` the clean row is a draw of the data's joint posterior, and unmasking a
    ``q``-fraction of the masked positions to it is a draw of the exact ``t -> t + dt`` step,
    correlations included. On the uniform path ``x_t`` holds each ``x1`` token with
    probability ``kappa(t)`` and noise otherwise; landing on ``x1`` with probability ``q``
    keeps ``x_{t+dt}`` on the path's marginal ``kappa(t + dt)``, the coupling the sampler's
    jumps use."""
    u = torch.rand(x_t.shape, generator=generator, device=x_t.device)
    land = changeable & (u < q.to(u.dtype).view(-1, 1))
    return torch.where(land, x1, x_t)


def joint_log_likelihood(
    logits: Tensor, log_trans: Tensor | None, x: Tensor, y: Tensor, q: Tensor,
    changeable: Tensor, source: str, mask_id: int,
) -> Tensor:  # fmt: skip
    """``log P(y | x)`` ``[B]`` under the student's step from its logits: a chain's (at the
    changeable positions ``[N, K, C]`` or everywhere ``[B, L, K, C]``, :func:`chain_losses`)
    with its transitions ``log_trans`` (the forward algorithm), or a mixture's ``[K, B, L, C]``
    with ``log_trans = None`` (a log-mean-exp over the codes)."""
    if log_trans is not None:
        at = changeable.nonzero(as_tuple=True)
        logs = _changeable_log_probs(logits, at)
        ll = _code_log_likelihoods(logs, x, y, q, at, changeable.shape, source, mask_id)
        return chain_log_likelihood(ll, log_trans, marginals=False)[0]
    logs = torch.log_softmax(logits.float(), dim=-1)
    ll = step_log_likelihoods(logs, x, y, q, source, mask_id, changeable)
    return torch.logsumexp(ll.sum(-1), dim=0) - math.log(logits.shape[0])


def student_step_terms(model, x: Tensor, t: Tensor, dt: Tensor, codes: int, changeable: Tensor):
    """``(logits, log_trans)`` of a correlated student at ``x``: one body pass for a chain
    (its head at the ``changeable`` positions only, ``[N, K, C]``, and its transitions over the
    row), ``K`` copies of each row for a mixture (``[K, B, L, C]``, ``None``)."""
    if latent_chain_of(model):
        return model.chain_terms(x, t, dt, positions=changeable)
    b = x.shape[0]
    z = torch.arange(codes, device=x.device).repeat_interleave(b)
    logits = model(x.repeat(codes, 1), t.repeat(codes), dt.repeat(codes), z)
    return logits.view(codes, b, *logits.shape[1:]), None


def joint_nll(
    model, x: Tensor, t: Tensor, dt: Tensor, y: Tensor, q: Tensor, changeable: Tensor,
    source: str, mask_id: int, codes: int,
) -> Tensor:  # fmt: skip
    """``-log P(y | x)`` under the student's step (mixture or chain), summed over rows and
    divided by the number of changeable positions: the data term's loss."""
    logits, log_trans = student_step_terms(model, x, t, dt, codes, changeable)
    joint = joint_log_likelihood(logits, log_trans, x, y, q, changeable, source, mask_id)
    return per_position_nll(joint, changeable)


def per_position_nll(joint: Tensor, changeable: Tensor) -> Tensor:
    """``-sum_rows log P(y | x)`` per changeable position (the data term's scale)."""
    return -joint.sum() / changeable.float().sum().clamp_min(1.0)


class MixtureObjective(ShortcutObjective):
    """:class:`ShortcutObjective` for a mixture student: the same rows, anchors and exact
    per-position targets, plus one draw ``y`` of the composed step and the student under every
    code (module doc). Metrics: ``anchor_frac``, ``mix_marginal`` and ``mix_corr`` (the two loss
    terms) and ``mix_pmi`` (the student's pointwise total correlation at ``y``, nats per row)."""

    def __init__(self, *args, latent_codes: int, joint_weight: float, data_weight: float = 0.0,
                 **kw):  # fmt: skip
        super().__init__(*args, **kw)
        self.codes, self.joint_weight, self.data_weight = latent_codes, joint_weight, data_weight

    def target_model_fn(self, generator):
        """The EMA mixture student, with one code per row from the training generator."""
        ema = self.target_model if self.target_model is not None else self.teacher
        if latent_codes_of(ema) != self.codes:
            return super().target_model_fn(generator)  # the teacher, before the EMA is bound
        return lambda x, tt, hh: ema(x, tt, hh, draw_model_latent(ema, x, generator))

    def __call__(self, model, x1, generator):
        dt, t, x_t = self.draw_rows(x1, generator)
        target, anchor, y = self.step_targets(model, x_t, t, dt, generator, sample=True)
        q = switch_probability(t, dt, self.scheduler, x_t.device)
        changeable = self.changeable(x_t)
        logits, log_trans = student_step_terms(model, x_t, t, dt, self.codes, changeable)
        if log_trans is not None:
            marginal, correlation, pmi = chain_losses(
                logits, log_trans, target, x_t, y, q, changeable, self.source, self.mask_id
            )
        else:
            marginal, correlation, pmi = mixture_losses(
                logits, target, x_t, y, q, changeable, self.source, self.mask_id
            )
        loss = marginal + self.joint_weight * correlation
        metrics = {
            "anchor_frac": float(anchor.float().mean()),
            "mix_marginal": float(marginal.detach()),
            "mix_corr": float(correlation.detach()),
            "mix_pmi": float(pmi),
        }
        if self.data_weight > 0:  # Di4C's data term: the true step's joint, drawn from x1
            # the same rows x_t, so the same network outputs: only the landing y differs
            y_data = data_step(x1, x_t, q, changeable, generator)
            joint = joint_log_likelihood(
                logits, log_trans, x_t, y_data, q, changeable, self.source, self.mask_id
            )
            data = per_position_nll(joint, changeable)
            loss = loss + self.data_weight * data
            metrics["mix_data_nll"] = float(data.detach())
        if self.navigator is not None and model.training:
            metrics.update(self.navigation_metrics())
        return loss, metrics


__all__ = [
    "MixtureObjective",
    "chain_log_likelihood",
    "chain_losses",
    "joint_log_likelihood",
    "joint_nll",
    "mixture_losses",
    "step_log_likelihoods",
]
