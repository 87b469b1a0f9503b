"""The finite-step sampler: integrate the mixture-path CTMC from ``x0`` at t = 0 to t = 1.

Step k goes from ``t_k`` to ``t_{k+1}`` (uniform grid ``t_k = k / steps`` unless a grid is
given): one denoiser call ``p = softmax(filter(model_fn(x, t_k, dt)))``, then one
:func:`~tsdfm.flow.jump.jump`, which with the default ``jump_rule="exact"`` solves the
CTMC exactly for the frozen ``p``. With the true denoiser and a factorised target the
samples are exact for any number of steps; the few-step error of a real model comes only
from freezing ``p`` (positions that switch in the same step are drawn independently).

Head at the switching positions (the default for a model with ``supports_positions``, exact
rule, no cache): which positions switch in a step depends on the sampler's uniforms, ``q`` and
the clamp only, so it is drawn before the model call, and the model returns logits at those
positions alone (its body still sees the whole sequence). The random numbers and their order are
those of :func:`~tsdfm.flow.jump.jump`, so the samples are the same; the head and the last block
then cost about L positions over a whole run instead of ``steps * L``. A chain student
(docs/mixture.md) takes this path too: its noise is drawn first, where the full-head path
draws it, so the samples are again the same; its body runs at every position (the codes run
along the row), its offsets and head at the switching positions only.

Caching (mask source only, DESIGN section 2): a model without time conditioning returns
the same logits until some position of the row unmasks, so only rows whose ids changed
since their last forward are re-run. ``nfe_actual`` counts the calls actually made (a call
on a subset of rows counts 1); a 1,024-step sampler then needs at most L calls per row.
Caching only saves work: each step draws the same random numbers either way, so
``cache=True`` and ``cache=False`` give identical samples under the same seed (for a
model whose output really does not depend on ``t``).

A mixture student (``config.latent_codes > 0``, docs/mixture.md) gets one latent code
``z ~ Uniform{0..K-1}`` per row per step, drawn from ``generator`` just before its forward pass and
passed as its fourth argument: the step is then a mixture of products over ``z``, at the same
one forward pass per step. A chain student (``config.latent_chain``) gets uniform noise
``[B, L]`` instead, from which it draws its chain of codes. Nothing is drawn for any other model, so their random streams are
unchanged. Caching is refused for it (its output changes with every draw).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tsdfm.errors import TsdfmError
from tsdfm.flow.filtering import filter_logits
from tsdfm.flow.jump import JUMP_RULES, draw_switches, jump, land
from tsdfm.flow.path import check_source
from tsdfm.flow.rng import categorical
from tsdfm.flow.scheduler import Scheduler
from tsdfm.models.latent import draw_model_latent, latent_codes_of

__all__ = ["SampleResult", "categorical", "filter_logits", "jump", "sample"]

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class SampleResult:
    """Final ids ``[B, L]``, nominal and actual forward passes, wall-clock seconds, and the
    optional trajectory (``x0`` then the ids after each step, on the CPU)."""

    ids: Tensor
    nfe_nominal: int
    nfe_actual: int
    seconds: float
    trajectory: list[Tensor] | None = None
    # Forward passes per sequence (rows forwarded / batch): what caching saves for one sample,
    # independent of the batch size (a batched call counts once in ``nfe_actual``).
    nfe_per_sample: float = 0.0


def _check_steps(steps: int) -> int:
    try:
        n = int(steps)
    except (TypeError, ValueError):
        n = None
    if isinstance(steps, bool) or n is None or n != steps:
        raise TsdfmError(f"steps must be an integer >= 1, got {steps!r}")
    if n < 1:
        raise TsdfmError(f"steps must be >= 1, got {n}; use e.g. steps=8 or steps=1024")
    return n


def _time_grid(steps: int, time_grid: Sequence[float] | Tensor | None) -> tuple[list, list]:
    """Return the step start times ``t_k`` and sizes ``h_k`` as Python floats."""
    if time_grid is None:
        grid = [k / steps for k in range(steps + 1)]
    else:
        grid = [float(v) for v in torch.as_tensor(time_grid, dtype=torch.float64).flatten()]
        if len(grid) != steps + 1:
            raise TsdfmError(f"time_grid must have steps + 1 = {steps + 1} points, got {len(grid)}")
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in grid) or any(
            b <= a for a, b in zip(grid, grid[1:], strict=False)
        ):
            raise TsdfmError("time_grid must be strictly increasing values in [0, 1]")
    return grid[:-1], [b - a for a, b in zip(grid, grid[1:], strict=False)]


def _check_inputs(x0: Tensor, mask_id: int, clamp: Tensor | None) -> Tensor | None:
    if not isinstance(x0, Tensor) or x0.dim() != 2 or x0.is_floating_point():
        shape = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise TsdfmError(f"x0 must be an integer tensor of shape [B, L], got {shape}")
    if x0.numel() and (int(x0.min()) < 0 or int(x0.max()) > mask_id):
        raise TsdfmError(f"x0 ids must lie in [0, mask_id={mask_id}]")
    if clamp is None:
        return None
    if clamp.shape != x0.shape:
        raise TsdfmError(
            f"clamp must have the shape of x0 {tuple(x0.shape)}, got {tuple(clamp.shape)}"
        )
    clamp = clamp.to(device=x0.device, dtype=torch.bool)
    if bool((x0[clamp] == mask_id).any()):
        raise TsdfmError("clamped positions hold [MASK]; put the fixed tokens in x0 there")
    return clamp


def _forward(
    model_fn: ModelFn,
    x: Tensor,
    t: Tensor,
    dt: Tensor,
    num_classes: int,
    generator: torch.Generator,
    latent_codes: int = 0,
) -> Tensor:
    if latent_codes:
        logits = model_fn(x, t, dt, draw_model_latent(model_fn, x, generator))
    else:
        logits = model_fn(x, t, dt)
    expected = (*x.shape, num_classes)
    if tuple(logits.shape) != expected:
        raise TsdfmError(
            f"model returned logits of shape {tuple(logits.shape)}, expected {expected} "
            "(num_classes must equal mask_id: check the model matches the tokenizer)"
        )
    return logits


def supports_positions(model_fn) -> bool:
    """True when ``model_fn(x, t, dt, positions=mask)`` returns logits at ``mask`` only (a
    ``torch.compile`` wrapper forwards the attribute of the module it wraps)."""
    return bool(getattr(model_fn, "supports_positions", False))


def _logits_at(
    model_fn,
    x: Tensor,
    t: Tensor,
    dt: Tensor,
    switch: Tensor,
    num_classes: int,
    z: Tensor | None = None,
) -> tuple[Tensor, int]:
    """``(logits [N, C] at x[switch], rows forwarded)``; rows without a switching position
    are left out of the call (and of a chain student's noise ``z``), and no call is made when
    nothing switches."""
    rows = switch.any(dim=1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return torch.zeros(0, num_classes, device=x.device), 0
    if rows.numel() < x.shape[0]:
        x, t, dt, switch = x[rows], t[rows], dt[rows], switch[rows]
        z = None if z is None else z[rows]
    latent = () if z is None else (z,)
    logits = model_fn(x, t, dt, *latent, positions=switch)
    expected = (int(switch.sum()), num_classes)
    if tuple(logits.shape) != expected:
        raise TsdfmError(
            f"model returned logits of shape {tuple(logits.shape)} at the switching positions, "
            f"expected {expected} (num_classes must equal mask_id: check the model matches "
            "the tokenizer)"
        )
    return logits, x.shape[0]


def sample(
    model_fn: ModelFn,
    x0: Tensor,
    steps: int,
    scheduler: Scheduler,
    source: str,
    mask_id: int,
    generator: torch.Generator,
    *,
    time_grid: Sequence[float] | Tensor | None = None,
    cache: bool = False,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    jump_rule: str = "exact",
    clamp: Tensor | None = None,
    record_trajectory: bool = False,
    dt_for_model: float | None = None,
    progress: bool = False,
    callback: Callable[[int, Tensor], None] | None = None,
    head_at_jumps: bool | None = None,
) -> SampleResult:
    """Sample ``steps`` jumps from ``x0 [B, L]`` (see the module doc for the maths).

    Each step calls ``model_fn(x, t_vec, dt_vec)`` with float32 ``[B]`` vectors: ``t_k`` and
    ``dt_for_model`` if given, else the step size (``1 / steps`` on the uniform grid).
    ``time_grid`` (``steps + 1`` strictly increasing points in [0, 1]) replaces the uniform
    grid. Positions where ``clamp`` is True keep their ``x0`` tokens. ``num_classes`` is
    ``mask_id`` (the model's logits must be ``[B, L, mask_id]``). ``callback(k, x)`` is called
    after step ``k`` (1..steps) with the current ids, so a caller can show the sequence while it
    crystallises instead of storing every step (it must not modify ``x``).

    ``head_at_jumps`` (default: on wherever it applies): with the exact rule and no forward
    cache, draw which positions switch first (that never depends on the model) and ask a
    model that accepts ``positions=`` (``supports_positions``, e.g. the Denoiser) for logits
    at those positions only, then filter and draw there. Same random numbers in the same
    order, so the same samples (up to float rounding of a smaller matmul); rows with no
    switching position skip the call. Off: one full ``[B, L, V]`` call per step.
    """
    steps = _check_steps(steps)
    check_source(source)
    if jump_rule not in JUMP_RULES:
        raise TsdfmError(f"unknown jump_rule {jump_rule!r}; choose one of {', '.join(JUMP_RULES)}")
    if cache and source != "mask":
        raise TsdfmError(
            "cache=True is only valid for the mask source (a uniform-source model's output "
            "changes with every step); use cache=False"
        )
    latent_codes = latent_codes_of(model_fn)
    if cache and latent_codes:
        raise TsdfmError(
            "cache=True cannot be used with a mixture student (a fresh latent every step "
            "changes its output); use cache=False"
        )
    clamp = _check_inputs(x0, mask_id, clamp)
    filter_logits(torch.zeros(1), top_k, top_p, temperature)  # validate before any model call
    starts, sizes = _time_grid(steps, time_grid)
    at_jumps = jump_rule == "exact" and not cache and supports_positions(model_fn)
    if head_at_jumps is not None:
        at_jumps = at_jumps and bool(head_at_jumps)

    batch, device = x0.shape[0], x0.device
    x = x0.to(torch.long).clone()
    trajectory = [x.cpu().clone()] if record_trajectory else None
    nfe_actual = 0
    rows_forwarded = 0
    cached: Tensor | None = None
    seen: Tensor | None = None
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="sampling", unit="step")

    begin = time.perf_counter()
    with torch.no_grad():
        for k in iterator:
            t_k, h_k = starts[k], sizes[k]
            if dt_for_model is not None:
                dt_model = float(dt_for_model)
            else:
                dt_model = 1.0 / steps if time_grid is None else h_k
            t_vec = torch.full((batch,), t_k, dtype=torch.float32, device=device)
            dt_vec = torch.full((batch,), dt_model, dtype=torch.float32, device=device)

            if at_jumps:
                # a chain student's noise first: the random stream of the full-head path
                z = draw_model_latent(model_fn, x, generator) if latent_codes else None
                switch = draw_switches(x, t_k, h_k, scheduler, source, mask_id, generator, clamp)
                logits, moved = _logits_at(model_fn, x, t_vec, dt_vec, switch, mask_id, z)
                nfe_actual += int(moved > 0)
                rows_forwarded += moved
                logits = filter_logits(logits, top_k, top_p, temperature)
                x = land(x, switch, logits, generator)
            else:
                # the cache holds *filtered* logits: filtering acts on each position's row alone,
                # so filtering once when a row is forwarded equals filtering the cache every step
                # (a temperature row at 1,024 steps otherwise rescales [B, L, V] 1,024 times)
                if not cache or cached is None:
                    logits = _forward(model_fn, x, t_vec, dt_vec, mask_id, generator, latent_codes)
                    logits = filter_logits(logits, top_k, top_p, temperature)
                    nfe_actual += 1
                    rows_forwarded += batch
                    if cache:
                        cached, seen = logits.clone(), x.clone()
                else:
                    rows = (x != seen).any(dim=1).nonzero().squeeze(1)
                    if rows.numel():
                        sub = _forward(
                            model_fn, x[rows], t_vec[rows], dt_vec[rows], mask_id, generator
                        )
                        nfe_actual += 1
                        rows_forwarded += rows.numel()
                        sub = filter_logits(sub.to(cached.dtype), top_k, top_p, temperature)
                        cached[rows] = sub
                        seen[rows] = x[rows]
                    logits = cached
                x = jump(
                    x, logits, t_k, h_k, scheduler, source, mask_id, generator, jump_rule, clamp
                )
            if trajectory is not None:
                trajectory.append(x.cpu().clone())
            if callback is not None:
                callback(k + 1, x)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - begin
    return SampleResult(x, steps, nfe_actual, seconds, trajectory, rows_forwarded / max(batch, 1))
