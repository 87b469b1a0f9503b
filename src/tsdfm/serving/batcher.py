"""Step-level request batching: every sampler step of every running request in one forward pass.

A worker thread owns the model. Each loop iteration it admits waiting requests (up to
``max_batch`` rows; an idle server lets the first request wait ``batch_window_ms`` for company),
concatenates the rows of all running requests of one sequence length into one ``[B, L]`` batch
and calls the denoiser once, with per-row ``t = k / steps`` and ``dt = 1 / steps`` vectors, so requests at different
steps, step counts, temperatures or top-p share the call. The jump that follows is per request:
it filters that request's logits with its own temperature / top-k / top-p and draws with its own
``torch.Generator``, exactly the random numbers :meth:`tsdfm.generator.Generator.generate` draws
for the same seed. So batching changes no sample: a request gives the same text alone or among
others (up to float rounding of the batched matmul).

As in :func:`tsdfm.flow.sampler.sample`, a model that accepts ``positions=`` (the Denoiser) is
asked for logits only where positions move: each request first draws which of its positions
switch this step (its own generator, the same uniforms the sampler draws), the batched forward
runs the last block and the head at those positions alone, and each request then draws its
landing tokens there. A chain student's noise is drawn per request before its switches, as the
sampler draws it. Forward caching (a time-independent mask-source model:
``tsdfm.generation.can_cache``) keeps the full-logits path, per request: only rows whose ids
changed since their last forward are re-run.

Results travel back to the asyncio side through ``loop.call_soon_threadsafe``; a request whose
client went away is marked ``cancelled`` and dropped at the next step, freeing its rows.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tsdfm.flow import filter_logits, jump, make_scheduler
from tsdfm.flow.jump import draw_switches, land
from tsdfm.flow.sampler import supports_positions
from tsdfm.generation import can_cache
from tsdfm.inference import autocast
from tsdfm.models.latent import draw_model_latent, latent_codes_of
from tsdfm.serving.schemas import Limits, RequestError

Emit = Callable[[tuple], None]
log = logging.getLogger("tsdfm.serving")


@dataclass(eq=False)  # identity equality: list.remove must not compare tensors
class Job:
    """One request's rows: ids ``x [n, L]`` on the model's device, its clamp and sampler settings.

    ``emit`` receives ``("step", k, ids_cpu, step_seconds)`` after each step when ``want_steps``,
    then ``("done", ids_cpu, seconds, step_seconds)`` or ``("error", message)``.
    """

    x: Tensor
    clamp: Tensor | None
    generator: torch.Generator
    steps: int
    emit: Emit
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    want_steps: bool = False
    k: int = 0
    cancelled: bool = False
    started: float = field(default_factory=time.perf_counter)
    cached: Tensor | None = None
    seen: Tensor | None = None

    @property
    def rows(self) -> int:
        return self.x.shape[0]


def threadsafe_emitter(loop: asyncio.AbstractEventLoop, q: asyncio.Queue) -> Emit:
    """An ``emit`` that the worker thread may call: puts events on ``q`` in ``loop``."""

    def emit(event: tuple) -> None:
        try:
            loop.call_soon_threadsafe(q.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    return emit


class Batcher:
    """Owns the model on a worker thread; :meth:`submit` jobs from any thread."""

    def __init__(self, model: torch.nn.Module, limits: Limits, dtype: torch.dtype | None = None):
        self.model = model.eval()
        self.config = model.config
        self.limits = limits
        self.dtype = dtype
        self.device = next(model.parameters()).device
        self.scheduler = make_scheduler(self.config.scheduler, self.config.exponent)
        self.cacheable = can_cache(model)
        self.latent_codes = latent_codes_of(model)
        self.at_jumps = not self.cacheable and supports_positions(model)
        self._inbox: queue.Queue[Job] = queue.Queue()
        self._backlog: deque[Job] = deque()
        self._active: list[Job] = []
        self._lock = threading.Lock()
        self._pending = 0
        self._stop = threading.Event()
        self.stats = {"steps": 0, "forward_rows": 0, "max_rows": 0, "requests": 0}
        self._thread = threading.Thread(target=self._run, name="tsdfm-batcher", daemon=True)

    # ------------------------------------------------------------------ public side
    def start(self) -> Batcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is running, then end the worker (new submissions are refused)."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def submit(self, job: Job) -> None:
        """Queue ``job``; 503 when the server is stopping or ``max_pending`` requests are in."""
        if self._stop.is_set():
            raise RequestError(503, "the server is shutting down", code="shutting_down")
        with self._lock:
            if self._pending >= self.limits.max_pending:
                raise RequestError(
                    503,
                    f"the server is busy ({self._pending} requests in flight, limit "
                    f"{self.limits.max_pending}); retry shortly",
                    code="overloaded",
                )
            self._pending += 1
            self.stats["requests"] += 1
        self._inbox.put(job)

    # ------------------------------------------------------------------ worker side
    def _finish(self, job: Job, event: tuple | None) -> None:
        if event is not None and not job.cancelled:
            job.emit(event)
        with self._lock:
            self._pending -= 1

    def _admit(self) -> None:
        """Move waiting jobs into the running set, up to ``max_batch`` rows."""
        if not self._active and not self._backlog:
            try:
                self._backlog.append(self._inbox.get(timeout=0.05))
            except queue.Empty:
                return
            deadline = time.perf_counter() + self.limits.batch_window_ms / 1000
            rows = self._backlog[0].rows
            while rows < self.limits.max_batch and (wait := deadline - time.perf_counter()) > 0:
                try:
                    job = self._inbox.get(timeout=wait)
                except queue.Empty:
                    break
                self._backlog.append(job)
                rows += job.rows
        while True:
            try:
                self._backlog.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        rows = sum(j.rows for j in self._active)
        while self._backlog:
            job = self._backlog[0]
            if job.cancelled:
                self._backlog.popleft()
                self._finish(job, None)
                continue
            if self._active and rows + job.rows > self.limits.max_batch:
                break  # a request larger than max_batch still runs, alone
            self._active.append(self._backlog.popleft())
            rows += job.rows

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                self._admit()
                for job in [j for j in self._active if j.cancelled]:
                    self._active.remove(job)
                    self._finish(job, None)
                if not self._active:
                    if self._stop.is_set() and not self._backlog and self._inbox.empty():
                        return
                    continue
                jobs = list(self._active)
                try:
                    self._step(jobs)
                except Exception as e:  # a bug must not take the server down: fail this batch
                    log.exception("batched step failed; failing its %d requests", len(jobs))
                    for job in jobs:
                        self._active.remove(job)
                        self._finish(job, ("error", f"{type(e).__name__}: {e}"))

    def _forward_rows(self, job: Job) -> Tensor | None:
        """Row indices to re-run for ``job`` (None: all of them)."""
        if not self.cacheable or job.cached is None:
            return None
        return (job.x != job.seen).any(dim=1).nonzero().squeeze(1)

    def _step(self, jobs: list[Job]) -> None:
        if self.at_jumps:
            self._step_at_jumps(jobs)
        else:
            self._step_full(jobs)
        self.stats["steps"] += 1

    def _step_at_jumps(self, jobs: list[Job]) -> None:
        """One sampler step of every job, the head only at switching positions: switches drawn
        per job, one forward per sequence length over the rows that move, landings per job."""
        begin = time.perf_counter()
        # a chain student's noise first, per job: the random stream of the full-head path
        noise = [self._latent(j, j.x) for j in jobs]
        switches = [
            draw_switches(
                j.x, j.k / j.steps, (j.k + 1) / j.steps - j.k / j.steps, self.scheduler,
                self.config.source, self.config.mask_id, j.generator, j.clamp,
            )
            for j in jobs
        ]  # fmt: skip
        by_len: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            by_len.setdefault(job.x.shape[1], []).append(i)
        parts: list[Any] = [None] * len(jobs)
        for members in by_len.values():
            self._forward_at(
                [jobs[i] for i in members],
                [switches[i] for i in members],
                [noise[i] for i in members],
                members,
                parts,
            )
        for job, switch, part in zip(jobs, switches, parts, strict=True):
            filtered = filter_logits(part, job.top_k, job.top_p, job.temperature)
            job.x = land(job.x, switch, filtered, job.generator)
            job.k += 1
        self._report(jobs, time.perf_counter() - begin)

    def _latent(self, job: Job, x: Tensor) -> Tensor | None:
        """This job's latent for the rows ``x`` (a mixture / chain student; None otherwise),
        from its own generator."""
        return draw_model_latent(self.model, x, job.generator) if self.latent_codes else None

    def _forward_at(
        self, jobs: list[Job], switches: list, noise: list, where: list[int], parts: list
    ) -> None:
        """One batched forward (same length) at the switching positions of the rows that have
        any; each job's ``[N_job, C]`` logits (row-major order of its switches) go to ``parts``.
        ``noise``: each job's chain noise (None for a model without a latent)."""
        xs, ts, dts, sws, zs, sizes = [], [], [], [], [], []
        for job, switch, z in zip(jobs, switches, noise, strict=True):
            rows = switch.any(dim=1)
            xs.append(job.x[rows])
            sws.append(switch[rows])
            if z is not None:
                zs.append(z[rows])
            n = xs[-1].shape[0]
            ts.append(torch.full((n,), job.k / job.steps, device=self.device))
            dts.append(torch.full((n,), 1.0 / job.steps, device=self.device))
            sizes.append(int(switch.sum()))
        n_rows = sum(x.shape[0] for x in xs)
        if n_rows:
            latent = (torch.cat(zs),) if zs else ()
            with autocast(self.device, self.dtype):
                logits = self.model(
                    torch.cat(xs), torch.cat(ts), torch.cat(dts), *latent, positions=torch.cat(sws)
                ).float()
        else:
            logits = torch.zeros(0, self.config.num_classes, device=self.device)
        for i, part in zip(where, logits.split(sizes), strict=True):
            parts[i] = part
        self.stats["forward_rows"] += n_rows
        self.stats["max_rows"] = max(self.stats["max_rows"], n_rows)

    def _report(self, jobs: list[Job], took: float) -> None:
        """Finished jobs leave and get their answer; streaming ones get this step's state."""
        for job in jobs:
            if job.cancelled:
                continue
            if job.k == job.steps:
                self._active.remove(job)
                self._finish(job, ("done", job.x.cpu(), time.perf_counter() - job.started, took))
            elif job.want_steps:
                job.emit(("step", job.k, job.x.cpu(), took))

    def _step_full(self, jobs: list[Job]) -> None:
        """One sampler step of every job: one forward pass per sequence length, then per-job
        jumps (rows of different lengths cannot share a pass: the model has no padding mask)."""
        begin = time.perf_counter()
        by_len: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            by_len.setdefault(job.x.shape[1], []).append(i)
        picks = [self._forward_rows(j) for j in jobs]
        parts: list[Any] = [None] * len(jobs)
        for members in by_len.values():
            self._forward([jobs[i] for i in members], [picks[i] for i in members], members, parts)
        for job, rows, part in zip(jobs, picks, parts, strict=True):
            logits = self._update_cache(job, rows, part)
            k, steps = job.k, job.steps
            filtered = filter_logits(logits, job.top_k, job.top_p, job.temperature)
            h = (k + 1) / steps - k / steps  # the sampler's uniform grid, to the last bit
            job.x = jump(
                job.x, filtered, k / steps, h, self.scheduler, self.config.source,
                self.config.mask_id, job.generator, "exact", job.clamp,
            )  # fmt: skip
            job.k += 1
        self._report(jobs, time.perf_counter() - begin)

    def _forward(self, jobs: list[Job], picks: list, where: list[int], parts: list) -> None:
        """One batched forward of ``jobs`` (same length); their logits go to ``parts[where]``."""
        xs, ts, dts, zs = [], [], [], []
        for job, rows in zip(jobs, picks, strict=True):
            x = job.x if rows is None else job.x[rows]
            xs.append(x)
            ts.append(torch.full((x.shape[0],), job.k / job.steps, device=self.device))
            dts.append(torch.full((x.shape[0],), 1.0 / job.steps, device=self.device))
            if self.latent_codes:  # a mixture / chain student: this job's latents, its generator
                zs.append(self._latent(job, x))
        sizes = [x.shape[0] for x in xs]
        if not sum(sizes):
            return
        latent = (torch.cat(zs),) if zs else ()
        with autocast(self.device, self.dtype):
            logits = self.model(torch.cat(xs), torch.cat(ts), torch.cat(dts), *latent)
        for i, part in zip(where, logits.float().split(sizes), strict=True):
            parts[i] = part
        self.stats["forward_rows"] += sum(sizes)
        self.stats["max_rows"] = max(self.stats["max_rows"], sum(sizes))

    def _update_cache(self, job: Job, rows: Tensor | None, part: Tensor | None) -> Tensor:
        """The logits this job jumps with: fresh ones, or its cache with changed rows replaced."""
        if not self.cacheable:
            return part
        if job.cached is None or rows is None:
            job.cached, job.seen = part.clone(), job.x.clone()
        elif rows.numel():
            job.cached[rows] = part
            job.seen[rows] = job.x[rows]
        return job.cached
