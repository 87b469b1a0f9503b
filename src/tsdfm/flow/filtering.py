"""Temperature, top-k and nucleus (top-p) filtering of the raw denoiser logits.

DESIGN section 7: any truncation is applied to the denoiser's output ``p(x1 | x_t, t)``,
before it is turned into a jump, never to the jump distribution itself (truncating the
jump would change *when* positions move, not only *where* they land). Filtered classes
get logit ``-inf``; the top class is always kept, so every row keeps at least one class.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from tsdfm.errors import TsdfmError


def filter_logits(
    logits: Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Return ``logits [..., V]`` with every class outside the top-k / nucleus set to ``-inf``.

    * ``temperature``: divide the logits by it first, ``p ∝ p^(1/T)`` (< 1 sharpens, > 1
      flattens; 1 leaves them untouched). It traces a model's quality-diversity frontier:
      gen-PPL against entropy at several T, so two models can be compared at equal entropy.
    * ``top_k``: keep the ``k`` largest logits of each row (exactly ``k``; ties broken by
      index order as ``torch.topk`` does).
    * ``top_p``: keep the smallest set of most likely classes whose total probability
      ``>= top_p``: sorted by probability, class ``j`` is kept iff the mass strictly before
      it is ``< top_p``. Probabilities are computed in float64.

    All may be given (temperature, then top-k, then the nucleus of what is left). The
    defaults return ``logits`` unchanged.
    """
    if isinstance(temperature, bool) or not (
        isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0
    ):
        raise TsdfmError(f"temperature must be a finite number > 0, got {temperature!r}")
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None:
        whole = isinstance(top_k, numbers.Real) and math.isfinite(top_k) and top_k == int(top_k)
        if isinstance(top_k, bool) or not whole or top_k < 1:
            raise TsdfmError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
        top_k = int(top_k)
    if top_p is not None and not (isinstance(top_p, numbers.Real) and 0.0 < top_p <= 1.0):
        raise TsdfmError(f"top_p must be in (0, 1] or None, got {top_p!r}")

    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, kth, True)
        logits = logits.masked_fill(~keep, float("-inf"))

    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.to(torch.float64), dim=-1)
        # Exclusive cumulative sum (mass of the strictly more likely classes), without the
        # rounding of cumsum - probs.
        mass_before = torch.cumsum(probs, dim=-1).roll(1, dims=-1)
        mass_before[..., 0] = 0.0
        keep_sorted = mass_before < float(top_p)
        keep_sorted[..., 0] = True
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits
