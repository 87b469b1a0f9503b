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
import re
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


def side_of_curve(curve: Sequence[tuple[float, float]], entropy: float, ppl: float) -> int:
    """-1 where the row is better than the curve at equal entropy, +1 where worse, 0 where
    nothing can be said. Inside the curve's entropy range, the sign of the gap. Outside it no
    gap is invented, but a row can still *dominate*: more entropy than the curve's most diverse
    point and a lower gen-PPL than it (-1), or less entropy than its sharpest point and a
    higher gen-PPL (+1); either holds whatever the curve does beyond its ends, since a
    temperature moves gen-PPL and entropy the same way."""
    ref = ppl_at_entropy(curve, entropy)
    if ref is not None:
        return (ppl > ref) - (ppl < ref)
    (h_lo, p_lo), (h_hi, p_hi) = min(curve), max(curve)
    if entropy > h_hi and ppl < p_hi:
        return -1
    if entropy < h_lo and ppl > p_lo:
        return 1
    return 0


def seed_label(label: str) -> str:
    """The arm a seeded row belongs to: the label without its ``-sN`` seed part
    (``student-c025-k4-s1_8`` -> ``student-c025-k4_8``, ``student-blind-s0-T0.9_8`` ->
    ``student-blind-T0.9_8``); a label without one is its own arm."""
    return re.sub(r"-s\d+(?=-T[0-9.]+_|_)", "", label, count=1)


def arm_verdicts(gaps: Sequence[dict], evaluators: Sequence[str]) -> list[dict]:
    """The rows of :func:`equal_entropy_gaps` grouped by arm (:func:`seed_label`): per
    evaluator the seeds' gaps and a verdict, ``"below"`` when every seed is better than the
    curve at equal entropy (:func:`side_of_curve` -1; the difference is then beyond the seed
    spread, whose range lies wholly on one side of zero), ``"above"`` when every seed is worse,
    ``"mixed"`` when the seeds disagree, ``"not placed"`` when a seed lies off the curve's
    entropy range without dominating or being dominated. ``below_all`` is True when the verdict
    is ``"below"`` under every evaluator."""
    arms: dict[str, list[dict]] = {}
    for g in gaps:
        arms.setdefault(seed_label(g["label"]), []).append(g)
    out = []
    for arm, seeds in arms.items():
        per_ev = {}
        for ev in evaluators:
            cells = [s["evaluators"].get(ev) for s in seeds]
            if any(c is None for c in cells):
                continue
            sides = [c["side"] for c in cells]
            if 0 in sides:
                verdict = "not placed"
            else:
                verdict = {(-1,): "below", (1,): "above"}.get(tuple(set(sides)), "mixed")
            per_ev[ev] = {
                "gaps": [c["gap"] for c in cells],
                "sides": sides,
                "verdict": verdict,
            }
        out.append(
            {
                "arm": arm,
                "seeds": len(seeds),
                "entropy": [s["entropy"] for s in seeds],
                "evaluators": per_ev,
                "below_all": bool(per_ev)
                and len(per_ev) == len(evaluators)
                and all(v["verdict"] == "below" for v in per_ev.values()),
            }
        )
    return out


def equal_entropy_gaps(
    reference: Sequence[dict], rows: Sequence[dict], evaluators: Sequence[str]
) -> list[dict]:
    """For each row: its entropy, and per evaluator its gen-PPL, the reference's gen-PPL at
    that entropy, the relative gap (``None`` where the row lies outside the curve) and the
    row's side of the curve (:func:`side_of_curve`)."""
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
                "side": side_of_curve(curve, row["entropy"], ppl),
            }
        out.append({"label": row["label"], "entropy": row["entropy"], "evaluators": gaps})
    return out
