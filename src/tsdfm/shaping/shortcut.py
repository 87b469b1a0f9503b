"""Shortcut self-distillation targets (FS-DFM, arXiv 2509.20624), pure tensor code.

A student ``f(x_t, t, dt)`` must land, in one step of size ``dt``, where finer steps would.
Its target for ``(x_t, t, dt)`` is built from the EMA student at half the step, ``h = dt/2``,
by chaining stochastic jumps through *midpoints*. Three recipes (``method`` x ``space``):

``heun`` / ``probs`` (the default): **the exact composition of two half steps.** One jump of
size ``h`` moves a position that may still switch with probability ``q1 = q(t, h)``, landing on
a draw from ``p(k1)``; the second, from the midpoint ``m1``, with ``q2 = q(t + h, h)`` and
``p(k2)``, ``k2 = f(m1, t + h, h)``. The full step switches with ``q = q(t, dt)`` and
``q = q1 + (1 - q1) q2``. Per position, the two chained jumps land on ``y`` with probability

    mask source:     q1 p(k1)(y) + (1 - q1) q2 E[p(k2)(y) | m1 still masked]
    uniform source:  q1 (1 - q2) p(k1)(y) + q2 E[p(k2)(y)]      (plus the stay mass)

and one student jump lands there with ``q s(y)``, so the student's ideal ``s`` is that law
over ``q``. A per-sample target with exactly this expectation conditions on what the midpoint
did at the position (``w2 = q2 / q``, ``w1 = 1 - w2 = q1 (1 - q2) / q``):

    position still at the source in m1 (mask), every position (uniform):
        w1 p(k1) + w2 p(k2)
    position committed in m1 (mask source):
        p(k1)  (``committed="denoiser"``)  or  delta(m1)  (``committed="token"``)

Check (mask): ``E = (1 - q1)(w1 p(k1) + w2 E[p(k2) | masked]) + q1 p(k1)``; the ``p(k1)``
weight is ``q1 [(1 - q1)(1 - q2) + q] / q = q1 / q`` and the ``p(k2)`` weight
``(1 - q1) q2 / q``, as required. Applying the expectation's weight ``(1 - q1) q2 / q`` to
``p(k2)`` per sample instead (this module's target before the fix) puts ``(1 - q1)^2 q2 / q``
on it in expectation: at ``t = 0, dt = 1`` 0.25 instead of 0.5 (mask) and 0.5 instead of 1
(uniform), always leaning toward ``p(k1)``, the prediction made with the least context.

What a committed position contributes (``committed``): for a *blind* jump ``m1`` drew it from
``p(k1)``, so ``p(k1)`` (the Rao-Blackwellised value, lowest variance) and ``delta(m1)`` have
the same expectation. For a *navigated* jump (trajectory shaping, K > 1) or a midpoint drawn
from another law (the frozen teacher, the exact chain), only ``delta(m1)`` is the law the
chain actually followed: ``p(k1)`` is the distribution *before* selection and would erase the
navigator's choice at every position it committed. ``committed="auto"`` (the config default,
:func:`resolve_committed`) picks ``denoiser`` for blind jumps and ``token`` otherwise. One
approximation remains under navigation: at positions the chosen midpoint left masked, ``w1
p(k1)`` stands in for the commitments the midpoint did not make, weighted as for a blind jump
(exact when K = 1).

``rk4`` / ``logits``: **FS-DFM's published recipe**: three *chained* midpoints and the
(1, 2, 2, 1)/6 average of the four log-probabilities (a product of experts, mode-seeking)::

    k1 = f(x_t, t, h);       m1 = jump(x_t, k1, t -> t + h)
    k2 = f(m1, t + h, h);    m2 = jump(m1, k2, t + h -> t + dt)
    k3 = f(m2, t + h, h);    m3 = jump(m2, k3, t + h -> t + dt)
    k4 = f(m3, t + dt, h);   target = log_softmax((k1 + 2 k2 + 2 k3 + k4) / 6)

It mirrors continuous RK4's stages; it is *not* a composition of jumps (``m3`` has taken two
jumps over the second half, ``k3`` is evaluated at ``t + h`` on a state past it, and a
geometric mean of predictions is no law of any chain): it approximates a sharpened version of
the composed law. ``heun`` / ``logits`` is its two-stage form, ``(k1 + k2) / 2`` on one
midpoint (FS-DFM's ``heun_average``). ``rk4`` / ``probs`` (fixed RK weights on probabilities)
is refused: it corresponds to no law of jumps.

``carry_over`` (mask source, default on): the network's output at every *visible* position of
its input is replaced by a point mass on that token, as the exact denoiser's is (MDLM's SUBS
parameterisation). A mask-source network is never trained at visible positions (measured on the
markov teacher: 2.9 nats there against 1.7 at masked positions), so without it the logit
recipes average noise at every position a midpoint committed; with it those positions carry
the committed token into the target. The exact target never reads ``k2`` at committed
positions, so it is unaffected.

``temperature`` (tau, default 1: off) sharpens the combined target, ``p ∝ target^(1/tau)``
(``log_softmax(mix / tau)`` for logits); it applies to the shortcut rows only, never to the
anchor rows, so it compounds to ``tau^j`` at ``j`` links above the anchor.

The midpoint jump is a seam: ``jump_fn(x, logits, t, h, generator) -> x_next``. Blind
distillation passes :func:`blind_jump`; trajectory shaping passes a navigated jump, and nothing
else here changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from tsdfm.errors import TsdfmError
from tsdfm.flow import Scheduler, jump, switch_probability

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]
JumpFn = Callable[[Tensor, Tensor, Tensor, Tensor, torch.Generator], Tensor]

DT_SCHEMES = ("inverse", "chain")


def step_sizes(teacher_steps: int) -> Tensor:
    """The admissible step sizes ``{1, 1/2, ..., 1/N}`` (float64, largest first)."""
    n = int(round(math.log2(teacher_steps)))
    if 2**n != teacher_steps:
        raise TsdfmError(f"teacher_steps must be a power of two, got {teacher_steps}")
    return torch.tensor([2.0**-j for j in range(n + 1)], dtype=torch.float64)


def step_size_weights(teacher_steps: int, scheme: str) -> Tensor:
    """Sampling weights over :func:`step_sizes`.

    ``inverse``: proportional to 1/dt (FS-DFM); half of all rows get dt = 1/N and only ~3% get
    dt = 1/8 at N = 1,024, which starves an 8-step student at small budgets.
    ``chain``: equal weight on every power-of-two size, so each link of the chain
    1/N -> ... -> 1/8 -> ... -> 1 is trained equally often.
    """
    sizes = step_sizes(teacher_steps)
    if scheme == "inverse":
        w = 1.0 / sizes
    elif scheme == "chain":
        w = torch.ones_like(sizes)
    else:
        raise TsdfmError(f"unknown dt_weights {scheme!r}; choose one of {', '.join(DT_SCHEMES)}")
    return w / w.sum()


def sample_step_and_time(
    batch: int, teacher_steps: int, scheme: str, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``dt ~ weights`` and ``t = k / N`` uniform on the grid with ``t + dt <= 1`` (float32 [B])."""
    # Drawn on the generator's device (a GPU run passes a CUDA generator); same numbers on CPU.
    device = generator.device
    sizes = step_sizes(teacher_steps).to(device)
    idx = torch.multinomial(
        step_size_weights(teacher_steps, scheme).to(device), batch, True, generator=generator
    )
    dt = sizes[idx]
    span = (teacher_steps - (dt * teacher_steps).round()).long()  # admissible k in [0, span]
    u = torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
    k = (u * (span + 1).double()).floor().clamp(max=span.double())
    t = k / teacher_steps
    return dt.float(), t.float()


def blind_jump(scheduler: Scheduler, source: str, mask_id: int) -> JumpFn:
    """The unshaped midpoint jump: one exact stochastic step of the mixture path."""

    def _jump(
        x: Tensor, logits: Tensor, t: Tensor, h: Tensor, generator: torch.Generator
    ) -> Tensor:
        return jump(x, logits, t.double(), h.double(), scheduler, source, mask_id, generator)

    return _jump


TARGETS = (("heun", "probs"), ("heun", "logits"), ("rk4", "logits"))
COMMITTED_VALUES = ("auto", "denoiser", "token")


@torch.no_grad()
def shortcut_target(
    model_fn: ModelFn,
    x_t: Tensor,
    t: Tensor,
    dt: Tensor,
    *,
    method: str,
    space: str,
    scheduler: Scheduler,
    source: str,
    mask_id: int,
    jump_fn: JumpFn,
    generator: torch.Generator,
    temperature: float = 1.0,
    committed: str = "denoiser",
    carry_over: bool = True,
    return_sample: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Target log-probabilities ``[B, L, C]`` (float32) for a step of size ``dt`` from ``x_t``
    (module docstring: ``heun``/``probs`` is the exact two-half-step composition).

    ``return_sample`` (``heun``/``probs`` only; the mixture student's joint target,
    ``tsdfm.training.mixture``): also return ``y [B, L]``, the end of the two chained half
    steps, i.e. a blind jump from ``m1`` with ``k2`` over the second half. Its per-position law
    is, in expectation over ``m1``, the target above, and its *joint* law is the composition's.
    It is drawn after everything else, so the target is the same with or without it."""
    if not temperature > 0:
        raise TsdfmError(f"target temperature must be > 0, got {temperature}")
    check_target_options(committed, space, source, method)
    if committed == "auto":
        raise TsdfmError("resolve committed='auto' first (resolve_committed)")
    if carry_over and source == "mask":
        net = model_fn

        def model_fn(x: Tensor, tt: Tensor, hh: Tensor) -> Tensor:
            return carry_over_logits(net(x, tt, hh), x, mask_id)

    h = dt / 2
    k1 = model_fn(x_t, t, h)
    m1 = jump_fn(x_t, k1, t, h, generator)
    k2 = model_fn(m1, t + h, h)
    if space == "probs":
        logp = (
            _composed_two_half_steps(k1, k2, m1, t, h, dt, scheduler, source, mask_id, committed)
            .clamp_min(1e-30)
            .log()
        )
        if temperature != 1.0:
            logp = torch.log_softmax(logp / temperature, dim=-1)
        if return_sample:
            end = jump(m1, k2, (t + h).double(), h.double(), scheduler, source, mask_id, generator)
            return logp, end
        return logp
    if return_sample:
        raise TsdfmError("return_sample needs the exact composition (heun / probs)")
    if method == "heun":
        ks, weights = [k1, k2], [0.5, 0.5]
    else:
        m2 = jump_fn(m1, k2, t + h, h, generator)
        k3 = model_fn(m2, t + h, h)
        m3 = jump_fn(m2, k3, t + h, h, generator)
        k4 = model_fn(m3, t + dt, h)
        ks, weights = [k1, k2, k3, k4], [1 / 6, 2 / 6, 2 / 6, 1 / 6]
    mix = sum(w * torch.log_softmax(k.float(), dim=-1) for w, k in zip(weights, ks, strict=True))
    return torch.log_softmax(mix / temperature, dim=-1)


def _composed_two_half_steps(
    k1: Tensor,
    k2: Tensor,
    m1: Tensor,
    t: Tensor,
    h: Tensor,
    dt: Tensor,
    scheduler: Scheduler,
    source: str,
    mask_id: int,
    committed: str,
) -> Tensor:
    """The per-sample probabilities whose expectation over ``m1`` is the exact per-position law
    of two chained half steps (module docstring): ``w1 p(k1) + w2 p(k2)`` with ``w2 = q2 / q``,
    ``w1 = 1 - w2``, at positions still at the source in ``m1``; ``p(k1)`` or ``delta(m1)`` at
    positions ``m1`` committed (mask source)."""
    q2 = switch_probability(t + h, h, scheduler, k1.device)
    q = switch_probability(t, dt, scheduler, k1.device)
    w2 = (q2 / q.clamp_min(1e-300)).clamp(0.0, 1.0).float().view(-1, 1, 1)
    p1 = torch.softmax(k1.float(), dim=-1)
    p2 = torch.softmax(k2.float(), dim=-1)
    mix = (1 - w2) * p1 + w2 * p2
    if source != "mask":
        return mix
    if committed == "token":
        tokens = torch.where(m1 == mask_id, 0, m1)  # [MASK] may lie outside C
        done = torch.nn.functional.one_hot(tokens, p1.shape[-1]).to(p1.dtype)
    else:
        done = p1
    return torch.where((m1 == mask_id).unsqueeze(-1), mix, done)


def carry_over_logits(logits: Tensor, x: Tensor, mask_id: int) -> Tensor:
    """Float32 ``logits`` with every visible position of ``x`` (not ``[MASK]``) replaced by a
    point mass on its own token (``0`` there, ``-1e9`` elsewhere): the exact denoiser's output."""
    logits = logits.float()
    visible = x != mask_id
    tokens = torch.where(visible, x, 0).unsqueeze(-1)  # [MASK] may lie outside C
    point = torch.full_like(logits, -1e9).scatter_(-1, tokens, 0.0)
    return torch.where(visible.unsqueeze(-1), point, logits)


def resolve_committed(committed: str, source: str, space: str, blind_midpoints: bool) -> str:
    """``auto`` -> ``denoiser`` where ``p(k1)`` is the law the midpoint drew committed tokens
    from (a blind jump with the target network's own prediction; also wherever the value is
    unused: the uniform source commits nothing, logit targets carry tokens by ``carry_over``),
    else ``token`` (navigated with K > 1, teacher or exact midpoints)."""
    if committed != "auto":
        return committed
    if source != "mask" or space != "probs" or blind_midpoints:
        return "denoiser"
    return "token"


def check_target_options(
    committed: str, space: str, source: str, method: str = "heun", carry_over: bool = True
) -> None:
    """Refuse targets that are no law of jumps, and options that mean nothing (module doc)."""
    if method not in ("rk4", "heun"):
        raise TsdfmError(f"unknown shortcut method {method!r}; choose heun or rk4")
    if space not in ("logits", "probs"):
        raise TsdfmError(f"unknown target space {space!r}; choose probs or logits")
    if (method, space) not in TARGETS:
        raise TsdfmError(
            "target=rk4 with target_space=probs (fixed RK weights on probabilities) is no "
            "composition of jumps; use target=heun target_space=probs (the exact two-half-step "
            "composition, the default) or target=rk4 target_space=logits (FS-DFM's recipe)"
        )
    if committed not in COMMITTED_VALUES:
        raise TsdfmError(
            f"unknown committed {committed!r}; choose one of {', '.join(COMMITTED_VALUES)}"
        )
    if committed == "token" and space != "probs":
        raise TsdfmError(
            "target_committed=token needs target_space=probs: a one-hot has no finite logits "
            "to average (with carry_over the logit targets carry committed tokens already)"
        )
    if committed == "token" and source != "mask":
        raise TsdfmError(
            "target_committed=token applies to the mask source only: uniform-source midpoints "
            "commit no positions, so there is nothing to pass on"
        )


def distillation_loss(student_logits: Tensor, target_logp: Tensor, positions: Tensor) -> Tensor:
    """Forward KL(target || student), averaged over the positions that can still change.

    ``sum_y p(y) (log p(y) - log s(y))``; zero exactly when the student matches the target.
    """
    logs = torch.log_softmax(student_logits.float(), dim=-1)
    p = target_logp.exp()
    kl = (p * (target_logp - logs)).sum(-1)
    w = positions.float()
    return (kl * w).sum() / w.sum().clamp_min(1.0)
