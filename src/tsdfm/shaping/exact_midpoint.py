"""Exact midpoints on the markov benchmark: the ceiling of what a navigator could fix.

A shortcut target composes two half steps through a *sampled* midpoint (``tsdfm.shaping.
shortcut``). The blind midpoint is a factorised jump: every position draws its landing token
from its own marginal, independently of the others, so the midpoint is built from the right
per-position laws but with none of the correlations between positions that the true process
has. Composing through such incoherent midpoints is where, on the exact benchmark, an 8-step
student loses most of its quality (docs/results/markov-shaping-uniform/). Trajectory shaping
tries to repair the midpoint by keeping the most coherent of K factorised draws.

On the ``markov`` corpus the true midpoint law is known, so the repair can be made exactly
(``student.midpoint``):

* ``exact-marginal``: the factorised jump driven by the exact per-position posterior
  ``p(x_1^i | x_t)`` instead of the network's prediction (right marginals, still independent);
* ``exact-joint``: the true joint law of ``x_{t+h}`` given ``x_t``. A position of the mixture
  path sits at its clean token or at its source token, and the positions that switch between
  ``t`` and ``t + h`` do so independently with probability
  ``q = (kappa(t+h) - kappa(t)) / (1 - kappa(t))``; so the exact joint draw is

      x_1 ~ p(x_1 | x_t)            (one joint draw of the whole sequence, forward filtering /
                                     backward sampling: ``MarkovOracleDenoiser.sample_clean``)
      s^i ~ Bernoulli(q) per position (mask source: only positions still at ``[MASK]``)
      x_{t+h}^i = x_1^i if s^i else x_t^i.

  Its per-position marginals equal the factorised jump's, ``(1 - q)[v = x_t^i] + q p(x_1^i =
  v | x_t)`` (tested), so the two arms differ *only* in the correlations between positions.

Comparing a student trained with ``exact-joint`` midpoints against ``exact-marginal`` ones
measures what perfectly coherent midpoints are worth to the shortcut chain: the most any
navigator (which picks among factorised draws) could buy. Neither arm is a training recipe
for real text (there is no exact posterior there); they are diagnostics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsdfm.errors import TsdfmError
from tsdfm.flow import Scheduler, jump, switch_probability
from tsdfm.flow.rng import uniform
from tsdfm.shaping.shortcut import JumpFn

MIDPOINTS = ("model", "exact-marginal", "exact-joint")


def exact_midpoint_jump(
    oracle: nn.Module, scheduler: Scheduler, source: str, mask_id: int, kind: str
) -> JumpFn:
    """A :data:`JumpFn` that ignores the network's prediction and jumps with the exact law.

    ``oracle`` is a markov exact denoiser (``tsdfm.models.oracle``) with ``forward(x, t)`` and
    ``sample_clean(x, t, generator=)``; ``kind`` is ``exact-marginal`` or ``exact-joint``.
    """
    if kind not in ("exact-marginal", "exact-joint"):
        raise TsdfmError(f"unknown exact midpoint {kind!r}; choose exact-marginal or exact-joint")

    def _marginal(x: Tensor, logits: Tensor, t: Tensor, h: Tensor, generator) -> Tensor:
        post = oracle(x, t)
        return jump(x, post, t.double(), h.double(), scheduler, source, mask_id, generator)

    def _joint(x: Tensor, logits: Tensor, t: Tensor, h: Tensor, generator) -> Tensor:
        x1 = oracle.sample_clean(x, t, generator=generator).to(x.device)
        q = switch_probability(t.double(), h.double(), scheduler, x.device)
        q = q[:, None] if q.dim() == 1 else q
        switch = uniform(x.shape, generator, x.device) < q
        if source == "mask":
            switch &= x == mask_id
        return torch.where(switch, x1, x)

    fn = _joint if kind == "exact-joint" else _marginal
    fn.midpoint, fn.oracle = kind, oracle  # type: ignore[attr-defined]
    return fn


__all__ = ["MIDPOINTS", "exact_midpoint_jump"]
