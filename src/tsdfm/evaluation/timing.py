"""What a 1,024-step teacher costs without forward caching, measured without paying for all of it.

The report's teacher rows are sampled with forward caching (DESIGN.md section 5: a mask-source
model that ignores t re-uses its output until a position unmasks, so 1,024 nominal steps cost
about L forward passes). The honest baseline for the student's speed-up is still the plain
sampler, and ``results.json`` records it as the teacher row's ``sec_per_sample`` with the cached
figure beside it (``sec_per_sample_cached``).

Running a full uncached 1,024-step pass over a report's samples costs minutes to hours on a CPU,
so this times ``timed_steps`` consecutive steps of the *same* sampler at the *same* batch size
after ``warmup`` untimed ones, and scales: without caching every step is one forward pass of the
full batch plus one jump, whatever t is, so

    sec_per_sample ~= (seconds of the timed steps / timed_steps) * steps / batch_size.

The estimate is labelled as such in the metadata; ``benchmarks/speed.py`` times whole runs.
The window runs with ``head_at_jumps=False`` (the full ``[B, L, V]`` forward every step): with
the head at switching positions only, a step in which no position moves skips the model, so the
cost per step would depend on t (early steps of 1,024 rarely move anything) and the scaling
above would not hold.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from tsdfm.errors import TsdfmError
from tsdfm.flow import sample_source
from tsdfm.models import Denoiser


class _Enough(Exception):
    """Raised from the sampler's callback once the timed window is over."""


@dataclass(frozen=True)
class UncachedTiming:
    sec_per_sample: float
    steps: int
    batch_size: int
    timed_steps: int
    warmup_steps: int
    method: str = "timed window of the uncached sampler, scaled to all steps"

    def as_meta(self) -> dict:
        return asdict(self)


def time_uncached(
    model: Denoiser,
    steps: int,
    batch_size: int,
    seq_len: int | None = None,
    timed_steps: int = 32,
    warmup: int = 2,
    seed: int = 0,
) -> UncachedTiming:
    """Estimate seconds per sample of the uncached ``steps``-step sampler (see module doc)."""
    from tsdfm.generation import sample_denoiser

    if steps < 1 or batch_size < 1 or timed_steps < 1 or warmup < 0:
        raise TsdfmError("time_uncached needs steps, batch_size, timed_steps >= 1, warmup >= 0")
    timed = min(timed_steps, max(steps - warmup, 1))
    warm = min(warmup, steps - timed)
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    x0 = sample_source(
        (batch_size, seq_len or cfg.max_len), cfg.source, cfg.mask_id, cfg.num_classes, gen
    )
    marks: dict[int, float] = {}

    def clock(k: int, _x) -> None:
        marks[k] = time.perf_counter()
        if k >= warm + timed:
            raise _Enough

    start = time.perf_counter()
    was = model.training
    model.eval()
    try:
        sample_denoiser(model, x0, steps, gen, cache=False, callback=clock, head_at_jumps=False)
    except _Enough:
        pass
    finally:
        model.train(was)
    t0 = marks.get(warm, start) if warm else start
    seconds = marks[warm + timed] - t0
    return UncachedTiming(
        sec_per_sample=seconds / timed * steps / batch_size,
        steps=steps,
        batch_size=batch_size,
        timed_steps=timed,
        warmup_steps=warm,
    )


__all__ = ["UncachedTiming", "time_uncached"]
