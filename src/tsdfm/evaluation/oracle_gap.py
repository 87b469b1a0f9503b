"""How far a denoiser is from the exact one, per step size (``markov``, mask source).

For the mask source the marginal-exact few-step student has a closed form: the distribution a
masked position lands on after a step of any size ``dt`` from ``x_t`` is the exact posterior
``p(x_1^i | x_t)`` (the denoiser is a martingale, DESIGN.md section 3), which
:class:`~tsdfm.models.oracle.MarkovOracleDenoiser` computes. So a student trained on the
probability-mixture target should output the oracle's posterior at *every* ``dt``, and

    forward(dt) = E_{t on the dt grid, x_t ~ path} mean_{masked i} KL(oracle_i || model_i(x_t, t, dt))
    reverse(dt) = the same with KL(model_i || oracle_i)
    flatness(dt) = the same with H(model_i) - H(oracle_i)

measure, step size by step size, how far it is from that ideal. The directions differ:
``forward`` is what distillation minimises (mass-covering: a too-flat model pays little);
``reverse`` is mode-seeking (a too-flat model pays for every implausible token it would draw),
and a token drawn from the model costs ``reverse + H(model) - H(oracle)`` more nats under the
exact posterior than one drawn from the oracle, so it is the direction samples feel, and
``flatness`` (> 0: the model spreads more mass than the truth) is the part of that excess a
few-step sampler cannot average away. At ``dt = 1/N`` (the anchor) either says how well the
anchor was fitted; at the sizes the sampler uses, whether the shortcut chain carried the
anchor's quality up or lost it on the way. A teacher (no step-size input) ignores ``dt``; only
the time grid differs, and ``1/dt`` steps of the sampler visit exactly the times ``k dt`` this
draws from.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsdfm.flow import make_scheduler, sample_path


@torch.no_grad()
def oracle_gap(
    model: nn.Module,
    oracle: nn.Module,
    x1: Tensor,
    steps: list[int],
    generator: torch.Generator,
    batch_size: int = 256,
) -> dict[str, dict[int, float]]:
    """``{"forward" | "reverse" | "flatness": {S: value}}``, nats per masked position (module doc).

    ``x1 [B, L]``: clean sequences (true chain samples); each gets one time ``t = k/S`` with
    ``k`` uniform in ``[0, S)`` and one path draw ``x_t``, the same for every model given the
    same generator seed.
    """
    c = model.config
    scheduler = make_scheduler(c.scheduler, c.exponent)
    out: dict[str, dict[int, float]] = {"forward": {}, "reverse": {}, "flatness": {}}
    for S in steps:
        fwd, rev, flat, count = 0.0, 0.0, 0.0, 0
        for start in range(0, x1.shape[0], batch_size):
            x = x1[start : start + batch_size]
            k = torch.randint(0, S, (x.shape[0],), generator=generator)
            t = (k.double() / S).float()
            dt = torch.full_like(t, 1.0 / S)
            x_t = sample_path(x, t, scheduler, "mask", c.mask_id, c.num_classes, generator)
            masked = x_t == c.mask_id
            logq = torch.log_softmax(oracle(x_t, t, dt).double(), dim=-1)
            logm = torch.log_softmax(model(x_t, t, dt).double(), dim=-1)
            q, m = logq.exp(), logm.exp()
            fwd += float((q * (logq - logm)).sum(-1)[masked].sum())
            rev += float((m * (logm - logq)).sum(-1)[masked].sum())
            flat += float((q * logq - m * logm).sum(-1)[masked].sum())
            count += int(masked.sum())
        for key, total in (("forward", fwd), ("reverse", rev), ("flatness", flat)):
            out[key][S] = total / max(count, 1)
    return out


__all__ = ["oracle_gap"]
