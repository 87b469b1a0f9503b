"""Equal-entropy comparison of gen-PPL rows (text corpora).

A sampling temperature T < 1 lowers both a model's gen-PPL and its entropy at no training cost,
so "student A scores X% below model B" means little unless both sit at the same entropy. This
module places a row on a *reference curve*: the same model B sampled at several temperatures,
each point ``(entropy H_j, gen-PPL P_j)``. Between the two reference points that bracket the
row's entropy ``H``, log gen-PPL is interpolated linearly in entropy,

    log P_ref(H) = log P_a + (H - H_a) / (H_b - H_a) * (log P_b - log P_a),

(gen-PPL is the exponential of a mean NLL, so its log is the quantity that moves smoothly with
the temperature), and the row's gap is ``P / P_ref(H) - 1``. A row outside the curve's
entropy range gets no number: extrapolating would invent a point nobody sampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tsdfm.errors import TsdfmError


def ppl_at_entropy(curve: Sequence[tuple[float, float]], entropy: float) -> float | None:
    """gen-PPL of the reference ``curve`` (``[(entropy, gen_ppl), ...]``, any order) at
    ``entropy``, log-linear between the bracketing points; ``None`` outside its range."""
    pts = sorted((float(h), float(p)) for h, p in curve)
    if len(pts) < 2:
        raise TsdfmError("an equal-entropy reference needs at least two (entropy, gen-PPL) points")
    if any(p <= 0 or not math.isfinite(p) for _, p in pts):
        raise TsdfmError("gen-PPL values of the reference curve must be positive and finite")
    for (h_a, p_a), (h_b, p_b) in zip(pts[:-1], pts[1:], strict=True):
        if h_a <= entropy <= h_b:
            if h_b == h_a:
                return math.exp(0.5 * (math.log(p_a) + math.log(p_b)))
            w = (entropy - h_a) / (h_b - h_a)
            return math.exp(math.log(p_a) + w * (math.log(p_b) - math.log(p_a)))
    return None


def equal_entropy_gaps(
    reference: Sequence[dict], rows: Sequence[dict], evaluators: Sequence[str]
) -> list[dict]:
    """For each row: its entropy, and per evaluator its gen-PPL, the reference's gen-PPL at
    that entropy and the relative gap (``None`` where the row lies outside the curve)."""
    curves = {
        ev: [(r["entropy"], r["gen_ppl"][ev]) for r in reference if ev in r["gen_ppl"]]
        for ev in evaluators
    }
    out = []
    for row in rows:
        gaps = {}
        for ev, curve in curves.items():
            if ev not in row["gen_ppl"] or len(curve) < 2:
                continue
            ref = ppl_at_entropy(curve, row["entropy"])
            ppl = row["gen_ppl"][ev]
            gaps[ev] = {
                "gen_ppl": ppl,
                "reference": ref,
                "gap": None if ref is None else ppl / ref - 1.0,
            }
        out.append({"label": row["label"], "entropy": row["entropy"], "evaluators": gaps})
    return out
