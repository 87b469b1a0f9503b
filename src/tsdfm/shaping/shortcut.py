"""Shortcut self-distillation targets (FS-DFM, arXiv 2509.20624), pure tensor code.

A student ``f(x_t, t, dt)`` must land, in one step of size ``dt``, where finer steps would.
Its target for ``(x_t, t, dt)`` is built from the EMA student at half the step, ``h = dt/2``:

RK4-style (three midpoints, each a stochastic jump from ``x_t``, mirroring
``k2 = f(x + h k1)``, ``k3 = f(x + h k2)``, ``k4 = f(x + dt k3)`` of continuous RK4)::

    k1 = f(x_t, t, h);          m1 = jump(x_t, k1, t -> t + h)
    k2 = f(m1, t + h, h);       m2 = jump(x_t, k2, t -> t + h)
    k3 = f(m2, t + h, h);       m3 = jump(x_t, k3, t -> t + dt)
    k4 = f(m3, t + dt, h)

Heun-style (two chained half steps, the cheap variant)::

    k1 = f(x_t, t, h);  m1 = jump(x_t, k1, t -> t + h);  k2 = f(m1, t + h, h)

Two ways to combine them (``space``):

* ``logits``: average the logits with weights (1, 2, 2, 1)/6 (RK4) or (1, 1)/2 (Heun) -- a
  product of experts, sharper than any of its members (mode-seeking). FS-DFM's choice.
* ``probs``: average the *probabilities* instead. For Heun this is the marginal-exact
  composition of two masked half steps, ``(q1 p(k1) + (1 - q1) q2 p(k2)) / q`` (equal weights
  for linear kappa); RK4 uses its (1, 2, 2, 1)/6 weights. For the mask source the exact
  denoiser is a martingale, ``E[p(k_i)] = p(k1)``, and this target equals the one-step posterior
  in expectation: a student trained on it reproduces the teacher at equal steps (a correctness
  check), and only *biased* midpoints -- trajectory shaping -- can move it elsewhere. For the
  uniform source it is not: the composed fine jumps keep the current token more often than one
  posterior jump, so the student's ideal is that composed law (:mod:`tsdfm.flow.composite`
  samples it), not the teacher at equal steps.

``temperature`` (tau, default 1: off) sharpens the combined target, ``p ∝ mix^(1/tau)`` in
probability space (``log_softmax(mix / tau)`` for logits). Why it exists: on the exact
benchmark one link of the probability mixture driven by the *exact* denoiser is unbiased
(its expectation over midpoints converges to the exact posterior), but driven by a learned,
slightly wrong model it is flatter than the posterior (Jensen: averaging ``softmax(l + e)`` over
midpoint-dependent errors ``e`` spreads mass), and the shortcut chain compounds that flatness
link by link (docs/results/markov-exact-anchor/). ``tau < 1`` counters it per link; it applies
only to the shortcut rows, never to the anchor rows, so it compounds to ``tau^j`` at ``j``
links above the anchor.

In both spaces, a position that is no longer at the source token in the midpoint a k_i was
evaluated on contributes k1 in place of k_i: it has already jumped, so k_i (the denoiser's
output at a committed position, which a mask-source model is never trained on) says nothing
about where it lands from ``x_t``.

``carry_over`` (mask source): RK4's later midpoints jump *from x_t* with a prediction made *on
an earlier midpoint*, ``m2 = jump(x_t, k2)`` with ``k2 = f(m1)``. At a position ``m1`` already
committed, ``k2`` is the network's output at a visible position, which a mask-source model is
never trained on (measured on the markov teacher: entropy 2.9 nats, 8% on the visible token,
against 1.7 nats at masked positions), so ``m2`` (and ``m3``, and the contexts ``k3``, ``k4``
are evaluated on) can hold tokens drawn from noise. The exact denoiser puts a point mass on a
visible token ("carry-over", MDLM's SUBS parameterisation), so ``carry_over=True`` replaces the
network's output at every visible position of its input by that point mass before any jump or
mixture uses it: a later midpoint then lands where the earlier one committed. Heun's single
midpoint is unaffected; default False keeps the recipe the published results used.

``committed`` chooses *what* such a position contributes (mask source, ``probs`` space only):

* ``denoiser`` (default): ``p(k1)``, the distribution the token was drawn from. A blind jump
  draws committed tokens from ``p(k1)``, so this is the Rao-Blackwellised (lowest-variance)
  value of the same expectation.
* ``token``: the one-hot of the token the midpoint actually committed, ``delta(m_i)``. For a
  blind jump ``E[delta(m_i) | committed] = p(k1)``, so the target is unchanged in expectation
  (only noisier). For a *navigated* jump it is not: ``p(k1)`` is the distribution *before*
  selection and so erases the navigator's choice at every position it committed, leaving
  shaping to act only through ``k2..k4``'s context. ``token`` passes the chosen tokens on.

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


def _at_source(x: Tensor, source: str, mask_id: int) -> Tensor:
    """Positions that have not jumped yet (mask source); every position for uniform."""
    if source == "mask":
        return x == mask_id
    return torch.ones_like(x, dtype=torch.bool)


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
    carry_over: bool = False,
) -> Tensor:
    """Target log-probabilities ``[B, L, C]`` (float32) for a step of size ``dt`` from ``x_t``."""
    if not temperature > 0:
        raise TsdfmError(f"target temperature must be > 0, got {temperature}")
    if method not in ("rk4", "heun"):
        raise TsdfmError(f"unknown shortcut method {method!r}; choose rk4 or heun")
    if space not in ("logits", "probs"):
        raise TsdfmError(f"unknown target space {space!r}; choose logits or probs")
    check_target_options(committed, space, source, carry_over)
    if carry_over and source == "mask":
        net = model_fn

        def model_fn(x: Tensor, tt: Tensor, hh: Tensor) -> Tensor:
            return carry_over_logits(net(x, tt, hh), x, mask_id)

    h = dt / 2
    k1 = model_fn(x_t, t, h)
    m1 = jump_fn(x_t, k1, t, h, generator)
    k2 = model_fn(m1, t + h, h)
    if method == "heun":
        ks, states = [k1, k2], [x_t, m1]
        if space == "probs":
            # q = q1 + (1 - q1) q2, so the two weights q1/q and (1 - q1) q2 / q sum to one.
            q1 = switch_probability(t, h, scheduler)
            q = switch_probability(t, dt, scheduler)
            w1 = (q1 / q.clamp_min(1e-12)).float()
            weights = [w1, 1 - w1]
        else:
            weights = [0.5, 0.5]
    else:
        m2 = jump_fn(x_t, k2, t, h, generator)
        k3 = model_fn(m2, t + h, h)
        m3 = jump_fn(x_t, k3, t, dt, generator)
        k4 = model_fn(m3, t + dt, h)
        ks, states = [k1, k2, k3, k4], [x_t, m1, m2, m3]
        weights = [1 / 6, 2 / 6, 2 / 6, 1 / 6]
    to_space = (
        (lambda k: torch.log_softmax(k.float(), dim=-1))
        if space == "logits"
        else (lambda k: torch.softmax(k.float(), dim=-1))
    )
    first = to_space(k1)
    mix = torch.zeros_like(first)
    for w, k, state in zip(weights, ks, states, strict=True):
        at_source = _at_source(state, source, mask_id)
        done = first
        if committed == "token" and state is not x_t:
            tokens = torch.where(at_source, 0, state)  # [MASK] may lie outside C
            done = torch.nn.functional.one_hot(tokens, first.shape[-1]).to(first.dtype)
        mix = mix + _bcast(w, k1) * torch.where(at_source.unsqueeze(-1), to_space(k), done)
    logp = mix if space == "logits" else mix.clamp_min(1e-30).log()
    if space == "logits" or temperature != 1.0:
        logp = torch.log_softmax(logp / temperature, dim=-1)
    return logp


def carry_over_logits(logits: Tensor, x: Tensor, mask_id: int) -> Tensor:
    """Float32 ``logits`` with every visible position of ``x`` (not ``[MASK]``) replaced by a
    point mass on its own token (``0`` there, ``-1e9`` elsewhere): the exact denoiser's output."""
    logits = logits.float()
    visible = x != mask_id
    tokens = torch.where(visible, x, 0).unsqueeze(-1)  # [MASK] may lie outside C
    point = torch.full_like(logits, -1e9).scatter_(-1, tokens, 0.0)
    return torch.where(visible.unsqueeze(-1), point, logits)


COMMITTED_VALUES = ("denoiser", "token")


def check_target_options(committed: str, space: str, source: str, carry_over: bool = False) -> None:
    """Refuse combinations where ``committed`` or ``carry_over`` mean nothing (module docstring)."""
    if carry_over and source != "mask":
        raise TsdfmError(
            "student.carry_over applies to the mask source only: a uniform-source position is "
            "never 'visible', every position may still change"
        )
    if committed not in COMMITTED_VALUES:
        raise TsdfmError(
            f"unknown committed {committed!r}; choose one of {', '.join(COMMITTED_VALUES)}"
        )
    if committed == "token" and space != "probs":
        raise TsdfmError(
            "target_committed=token needs target_space=probs: a one-hot has no finite logits "
            "to average"
        )
    if committed == "token" and source != "mask":
        raise TsdfmError(
            "target_committed=token applies to the mask source only: uniform-source midpoints "
            "commit no positions, so there is nothing to pass on"
        )


def _bcast(w: float | Tensor, like: Tensor) -> float | Tensor:
    return w.view(-1, 1, 1).to(like.device) if isinstance(w, Tensor) else w


def distillation_loss(student_logits: Tensor, target_logp: Tensor, positions: Tensor) -> Tensor:
    """Forward KL(target || student), averaged over the positions that can still change.

    ``sum_y p(y) (log p(y) - log s(y))``; zero exactly when the student matches the target.
    """
    logs = torch.log_softmax(student_logits.float(), dim=-1)
    p = target_logp.exp()
    kl = (p * (target_logp - logs)).sum(-1)
    w = positions.float()
    return (kl * w).sum() / w.sum().clamp_min(1.0)
