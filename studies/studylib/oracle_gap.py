"""How far a denoiser is from the exact one, per step size (``markov``, mask or uniform source).

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

The uniform source is scored the same way, with one difference in what the numbers mean.
Its sampler moves a position to a draw from the posterior with probability
``q = (kappa(t+dt) - kappa(t)) / (1 - kappa(t))`` and keeps it otherwise, so the exact posterior
(:class:`~tsdfm.models.oracle.MarkovUniformOracleDenoiser`) is the ideal of a *teacher* at every
time and of a student at the anchor ``dt = 1/N``. It is not a student's ideal at larger ``dt``:
there the target is the composed law of the anchor's fine jumps, which keeps the current token
more often than one posterior jump (a token that survived a fine jump reads as partly clean to
the next; :mod:`tsdfm.flow.composite`). So at ``dt > 1/N`` a uniform-source gap mixes the
network's error with that legitimate difference; read it at the anchor. There is no mask to tell
which positions still need predicting, so the averages run over every position.
``forward_by_time`` splits ``forward`` by grid time ``k/S``: where along the path the model is
furthest from the posterior.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsdfm.errors import TsdfmError
from tsdfm.flow import make_scheduler, sample_path, switch_probability
from tsdfm.flow.composite import Composite


@torch.no_grad()
def oracle_gap(
    model: nn.Module,
    oracle: nn.Module,
    x1: Tensor,
    steps: list[int],
    generator: torch.Generator,
    batch_size: int = 256,
) -> dict[str, dict[int, float]]:
    """``{"forward" | "reverse" | "flatness": {S: value}, "forward_by_time": {S: [v_0..v_S-1]}}``,
    nats per masked position (mask source) or per position (uniform source); module doc.

    ``x1 [B, L]``: clean sequences (true chain samples); each gets one time ``t = k/S`` with
    ``k`` uniform in ``[0, S)`` and one path draw ``x_t``, the same for every model given the
    same generator seed. ``forward_by_time[S][k]`` is None where no sequence drew ``k``.
    """
    c = model.config
    scheduler = make_scheduler(c.scheduler, c.exponent)
    out: dict[str, dict] = {"forward": {}, "reverse": {}, "flatness": {}, "forward_by_time": {}}
    for S in steps:
        fwd, rev, flat, count = 0.0, 0.0, 0.0, 0
        fwd_k, count_k = torch.zeros(S, dtype=torch.float64), torch.zeros(S, dtype=torch.float64)
        for start in range(0, x1.shape[0], batch_size):
            x = x1[start : start + batch_size]
            k = torch.randint(0, S, (x.shape[0],), generator=generator)
            t = (k.double() / S).float()
            dt = torch.full_like(t, 1.0 / S)
            x_t = sample_path(x, t, scheduler, c.source, c.mask_id, c.num_classes, generator)
            scored = x_t == c.mask_id if c.source == "mask" else torch.ones_like(x_t, dtype=bool)
            logq = torch.log_softmax(oracle(x_t, t, dt).double(), dim=-1)
            logm = torch.log_softmax(model(x_t, t, dt).double(), dim=-1)
            q, m = logq.exp(), logm.exp()
            kl = (q * (logq - logm)).sum(-1) * scored
            fwd += float(kl.sum())
            rev += float((m * (logm - logq)).sum(-1)[scored].sum())
            flat += float((q * logq - m * logm).sum(-1)[scored].sum())
            count += int(scored.sum())
            fwd_k.index_add_(0, k, kl.sum(-1))
            count_k.index_add_(0, k, scored.sum(-1).double())
        for key, total in (("forward", fwd), ("reverse", rev), ("flatness", flat)):
            out[key][S] = total / max(count, 1)
        out["forward_by_time"][S] = [
            float(f / n) if n > 0 else None for f, n in zip(fwd_k, count_k, strict=True)
        ]
    return out


@torch.no_grad()
def current_token_mass(
    model: nn.Module,
    x1: Tensor,
    steps: int,
    generator: torch.Generator,
    *,
    composite: tuple[nn.Module, int, int] | None = None,
    batch_size: int = 256,
) -> list[float]:
    """Uniform source: mean probability the step puts on each position's *current* token,
    ``p(x_t^i)``, at every grid time ``t = k/S`` (``S = steps``, ``dt = 1/S``).

    How "sticky" a few-step model is: the sampler keeps ``x_t^i`` with probability
    ``(1 - q) + q p(x_t^i)``, and at early times most current tokens are noise, so extra mass
    here is noise carried forward. ``composite=(denoiser, substeps, chains)`` measures instead
    the composed law of ``substeps`` fine jumps of ``denoiser`` (a perfectly distilled
    student's step, :mod:`tsdfm.flow.composite`; ``model`` then only supplies the path) and
    reports the ``p(x_t^i)`` it implies,
    ``(P(keep) - (1 - q)) / q``. Each time gets its own ``x_t`` draws from ``x1``: the same for
    every model given the same generator seed; a composite call's fine chains draw from that
    generator too, so its ``x_t`` match the models' in the first batch only (same law after).
    """
    c = model.config  # the path (scheduler, source) is the model's, whichever step is measured
    if c.source != "uniform":
        raise TsdfmError("the current-token mass is a uniform-source measure")
    scheduler = make_scheduler(c.scheduler, c.exponent)
    if composite is not None:
        denoiser, substeps, chains = composite
        composed = Composite(substeps, chains, scheduler, c.source, c.mask_id)
    out = []
    for k in range(steps):
        t0, total, count = k / steps, 0.0, 0
        q = float(switch_probability(t0, 1.0 / steps, scheduler))
        for start in range(0, x1.shape[0], batch_size):
            x = x1[start : start + batch_size]
            t = torch.full((x.shape[0],), t0)
            x_t = sample_path(x, t, scheduler, c.source, c.mask_id, c.num_classes, generator)
            if composite is None:
                p = torch.softmax(model(x_t, t, torch.full_like(t, 1.0 / steps)).double(), -1)
                total += float(p.gather(-1, x_t[..., None]).sum())
            else:
                moved = composed.step(denoiser, x_t, t0, 1.0 / steps, generator)
                total += (float((moved == x_t).double().sum()) - (1 - q) * x_t.numel()) / q
            count += x_t.numel()
        out.append(total / count)
    return out


__all__ = ["current_token_mass", "oracle_gap"]
