"""Where a shortcut target's midpoints come from (``student.midpoint``).

A shortcut target composes two half steps through a *sampled* midpoint (``tsdfm.shaping.
shortcut``): ``m = jump(x_t, k, t -> t + h)`` with ``k`` the target network's own h-step
prediction (``model``, the recipe's default). That midpoint is a factorised jump: every
position draws its landing token from its own law, independently of the others. Two things
can be wrong with it: the per-position laws (``k`` is a learned, few-step prediction) and the
missing correlations between positions. Trajectory shaping rests on the hypothesis that the
second matters, and keeps the most coherent of K factorised draws. The other kinds separate
the two:

* ``teacher``: the factorised jump driven by the frozen teacher's posterior ``p(x_1 | x_t)``
  instead of the target network's h-step prediction. For both sources the exact landing law of
  a switching position is that posterior whatever the step size (the mixture path lands on
  ``x_1``), so with a good teacher this fixes the per-position laws; one extra teacher
  forward pass per midpoint, on any corpus.
* ``exact-marginal`` (markov only): the same with the chain's exact posterior (right
  marginals, still independent);
* ``exact-joint`` (markov only): the true joint law of ``x_{t+h}`` given ``x_t``. A position of
  the mixture path sits at its clean token or at its source token, and the positions that
  switch between ``t`` and ``t + h`` do so independently with probability
  ``q = (kappa(t+h) - kappa(t)) / (1 - kappa(t))``; so the exact joint draw is

      x_1 ~ p(x_1 | x_t)            (one joint draw of the whole sequence, forward filtering /
                                     backward sampling: ``MarkovOracleDenoiser.sample_clean``)
      s^i ~ Bernoulli(q) per position (mask source: only positions still at ``[MASK]``)
      x_{t+h}^i = x_1^i if s^i else x_t^i.

  Its per-position marginals equal the factorised jump's, ``(1 - q)[v = x_t^i] + q p(x_1^i =
  v | x_t)`` (tested), so ``exact-joint`` and ``exact-marginal`` differ *only* in the
  correlations between positions.

Comparing ``exact-joint`` with ``exact-marginal`` measures what perfectly coherent midpoints
are worth to the shortcut chain: the most any navigator (which picks among factorised draws)
could buy through coherence. The exact kinds are diagnostics (there is no exact posterior for
real text); measured in docs/results/markov-shaping-uniform/.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsdfm.config import MIDPOINT_KINDS as MIDPOINTS
from tsdfm.errors import TsdfmError
from tsdfm.flow import Scheduler, jump, switch_probability
from tsdfm.flow.rng import uniform
from tsdfm.shaping.shortcut import JumpFn


def midpoint_jump(
    denoiser: nn.Module, scheduler: Scheduler, source: str, mask_id: int, kind: str
) -> JumpFn:
    """A :data:`JumpFn` that ignores the target network's prediction and jumps with ``denoiser``.

    ``kind``: ``teacher`` or ``exact-marginal`` (a factorised jump with ``denoiser(x, t, h)``'s
    posterior: the frozen teacher, or a markov exact denoiser) or ``exact-joint`` (``denoiser``
    must be a markov exact denoiser with ``sample_clean(x, t, generator=)``).
    """
    if kind not in MIDPOINTS[1:]:
        raise TsdfmError(
            f"unknown midpoint kind {kind!r}; choose one of {', '.join(MIDPOINTS[1:])}"
        )
    if kind == "exact-joint" and not hasattr(denoiser, "sample_clean"):
        raise TsdfmError("exact-joint midpoints need the markov chain's exact denoiser")

    @torch.no_grad()
    def _factorised(x: Tensor, logits: Tensor, t: Tensor, h: Tensor, generator) -> Tensor:
        post = denoiser(x, t, h)
        return jump(x, post, t.double(), h.double(), scheduler, source, mask_id, generator)

    def _joint(x: Tensor, logits: Tensor, t: Tensor, h: Tensor, generator) -> Tensor:
        x1 = denoiser.sample_clean(x, t, generator=generator).to(x.device)
        q = switch_probability(t.double(), h.double(), scheduler, x.device)
        q = q[:, None] if q.dim() == 1 else q
        switch = uniform(x.shape, generator, x.device) < q
        if source == "mask":
            switch &= x == mask_id
        return torch.where(switch, x1, x)

    fn = _joint if kind == "exact-joint" else _factorised
    fn.midpoint, fn.oracle = kind, denoiser  # type: ignore[attr-defined]
    return fn


__all__ = ["MIDPOINTS", "midpoint_jump"]
