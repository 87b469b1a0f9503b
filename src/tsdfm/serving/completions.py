"""``POST /v1/completions``: a validated request -> a batcher job -> an OpenAI-shaped answer.

Length: a model writes sequences of at most L tokens. A ``prompt`` is the fixed prefix and
``max_tokens`` (default: the rest of L) the generated tokens after it, before an optional fixed
``suffix``; an ``infill`` template generates its ``[MASK]`` slots (plus ``max_tokens`` more at
the end, default 0). ``choices[i].text`` is the completion after the prompt (OpenAI's meaning;
``echo`` puts the prompt in front) and, for an infill template, the whole filled sequence.

Streaming sends OpenAI completion chunks whose ``text`` is empty until the last one, which
carries the final text, so a client that concatenates ``text`` gets the same answer as without
streaming; every chunk also carries the sampler's state after that step (``step``, ``state``,
``tokens``, ``changed``) for clients that want to show the trajectory.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from tsdfm.distributed import make_generator
from tsdfm.errors import TsdfmError
from tsdfm.flow import sample_source
from tsdfm.generator import Generator
from tsdfm.serving.batcher import Batcher, Job, threadsafe_emitter
from tsdfm.serving.schemas import CompletionRequest, RequestError

MASK_TEXT = "_"


@dataclass
class Plan:
    """What a request asks the sampler for: template ids, clamp, lengths and seed."""

    ids: Tensor
    fixed: Tensor
    prompt_len: int
    suffix_len: int
    seed: int
    temperature: float
    top_k: int | None


def plan_request(g: Generator, req: CompletionRequest) -> Plan:
    """Resolve lengths and the template; RequestError (400) naming the field when it cannot."""
    length = g.config.max_len
    try:
        tail = len(g.tokenizer.encode(req.suffix)) if req.suffix else 0
        if req.infill is not None:
            head = len(g._infill_ids(req.infill))
            gen_len = req.max_tokens or 0
        else:
            head = len(g.tokenizer.encode(req.prompt)) if req.prompt else 0
            gen_len = req.max_tokens if req.max_tokens is not None else length - head - tail
        if head + tail >= length and req.infill is None:
            raise RequestError(
                400,
                f"the prompt ({head} tokens) and suffix ({tail}) leave no room in the model's "
                f"length L = {length}; shorten the prompt",
                "prompt",
            )
        if head + gen_len + tail > length:
            what = "infill template" if req.infill is not None else "prompt"
            raise RequestError(
                400,
                f"{what} ({head} tokens) + max_tokens ({gen_len}) + suffix ({tail}) exceeds the "
                f"model's length L = {length}; use max_tokens <= {max(length - head - tail, 0)}",
                "max_tokens",
            )
        ids, fixed = g.template(head + gen_len + tail, req.prompt or None, req.suffix, req.infill)
    except TsdfmError as e:
        raise RequestError(400, str(e), "infill" if req.infill is not None else "prompt") from None
    greedy = req.temperature == 0.0  # OpenAI's temperature 0: the denoiser's argmax
    return Plan(
        ids=ids,
        fixed=fixed,
        prompt_len=0 if req.infill is not None else head,
        suffix_len=tail,
        seed=req.seed if req.seed is not None else secrets.randbits(63),
        temperature=1.0 if greedy else req.temperature,
        top_k=1 if greedy else req.top_k,
    )


def make_job(g: Generator, req: CompletionRequest, plan: Plan, emit, want_steps: bool) -> Job:
    """The batcher job: ``x0`` drawn exactly as :meth:`Generator.generate` draws it."""
    cfg, dev = g.config, g.device
    gen = make_generator(plan.seed, dev)
    shape = (req.n, plan.ids.numel())
    x0 = sample_source(shape, cfg.source, cfg.mask_id, cfg.num_classes, gen).to(dev)
    clamp = plan.fixed.to(dev).expand(req.n, -1)
    x0 = torch.where(clamp, plan.ids.to(dev).expand(req.n, -1), x0)
    return Job(
        x=x0,
        clamp=clamp.contiguous() if bool(plan.fixed.any()) else None,
        generator=gen,
        steps=req.steps,
        emit=emit,
        temperature=plan.temperature,
        top_k=plan.top_k,
        top_p=req.top_p,
        want_steps=want_steps,
    )


class Completions:
    """Turns requests into jobs on one :class:`Batcher` and jobs' events into answers."""

    def __init__(self, g: Generator, batcher: Batcher, model_id: str):
        self.g, self.batcher, self.model_id = g, batcher, model_id
        self._piece = lru_cache(maxsize=65536)(self._decode_one)

    def _decode_one(self, token: int) -> str:
        return self.g.tokenizer.decode([token])

    # ------------------------------------------------------------------ answers
    def texts(self, ids: Tensor, req: CompletionRequest, plan: Plan) -> list[str]:
        end = ids.shape[1] - plan.suffix_len
        start = 0 if req.echo else plan.prompt_len
        return self.g.tokenizer.decode_batch(ids[:, start:end].tolist())

    def envelope(self, rid: str, choices: list[dict], **extra: Any) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": choices,
            **extra,
        }

    def frame(self, ids: Tensor, prev: Tensor | None) -> list[dict[str, Any]]:
        """Per sample: the state text, per-position pieces (None = masked), changed positions."""
        mask = self.g.mask_id
        out = []
        for i, row in enumerate(ids.tolist()):
            changed = [] if prev is None else (ids[i] != prev[i]).nonzero().flatten().tolist()
            out.append(
                {
                    "index": i,
                    "text": "",
                    "logprobs": None,
                    "finish_reason": None,
                    "state": self.g.render(row, MASK_TEXT),
                    "tokens": [None if t == mask else self._piece(t) for t in row],
                    "changed": changed,
                    "masked": sum(t == mask for t in row),
                }
            )
        return out

    # ------------------------------------------------------------------ running
    def start(self, req: CompletionRequest, want_steps: bool) -> tuple[Plan, Job, asyncio.Queue]:
        plan = plan_request(self.g, req)
        events: asyncio.Queue = asyncio.Queue()
        emit = threadsafe_emitter(asyncio.get_running_loop(), events)
        job = make_job(self.g, req, plan, emit, want_steps)
        self.batcher.submit(job)
        return plan, job, events

    async def complete(
        self, req: CompletionRequest, disconnected: Callable[[], Awaitable[bool]]
    ) -> dict[str, Any]:
        """The whole answer at once; a client that goes away cancels its job."""
        plan, job, events = self.start(req, want_steps=False)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=0.25)
                    break
                except asyncio.TimeoutError:
                    if await disconnected():
                        job.cancelled = True
                        raise RequestError(499, "client closed the request") from None
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        if event[0] == "error":
            raise RequestError(500, f"sampling failed: {event[1]}", code="sampler_error")
        _, ids, seconds, _ = event
        choices = [
            {"text": t, "index": i, "logprobs": None, "finish_reason": "length"}
            for i, t in enumerate(self.texts(ids, req, plan))
        ]
        return self.envelope(
            f"cmpl-{uuid.uuid4().hex}", choices, usage=self.usage(ids, req, plan),
            seed=plan.seed, steps=req.steps, seconds=round(seconds, 6),
        )  # fmt: skip

    def usage(self, ids: Tensor, req: CompletionRequest, plan: Plan) -> dict[str, int]:
        fixed = int(plan.fixed.sum())
        generated = (ids.shape[1] - fixed) * req.n
        return {
            "prompt_tokens": fixed,
            "completion_tokens": generated,
            "total_tokens": fixed + generated,
        }

    async def stream(self, req: CompletionRequest) -> AsyncIterator[str]:
        """Server-sent events: the start, each step's state, the final text, ``[DONE]``.

        Set up (and any 4xx raised) before the first byte, so errors keep their status code.
        """
        plan, job, events = self.start(req, want_steps=True)
        rid = f"cmpl-{uuid.uuid4().hex}"
        start = torch.where(plan.fixed, plan.ids, torch.full_like(plan.ids, self.g.mask_id))
        prev = job.x.cpu() if self.g.config.source == "uniform" else start.expand(req.n, -1)

        def sse(obj: dict[str, Any]) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        async def events_iter() -> AsyncIterator[str]:
            nonlocal prev
            began = time.perf_counter()
            try:
                yield sse(self.envelope(rid, self.frame(prev, None), step=0, steps=req.steps,
                                        step_ms=0.0, elapsed_ms=0.0, seed=plan.seed,
                                        fixed=plan.fixed.nonzero().flatten().tolist()))  # fmt: skip
                while True:
                    event = await events.get()
                    if event[0] == "error":
                        yield sse({"error": {"message": event[1], "type": "server_error"}})
                        break
                    ids = event[2] if event[0] == "step" else event[1]
                    k = event[1] if event[0] == "step" else req.steps
                    step_ms = event[-1] * 1000
                    frames = self.frame(ids, prev)
                    prev = ids
                    extra = {"step": k, "steps": req.steps, "step_ms": step_ms,
                             "elapsed_ms": (time.perf_counter() - began) * 1000}  # fmt: skip
                    if event[0] == "done":
                        for c, text in zip(frames, self.texts(ids, req, plan), strict=True):
                            c["text"], c["finish_reason"] = text, "length"
                        extra["usage"] = self.usage(ids, req, plan)
                        yield sse(self.envelope(rid, frames, **extra))
                        break
                    yield sse(self.envelope(rid, frames, **extra))
                yield "data: [DONE]\n\n"
            finally:  # normal end, or the client went away (the task is cancelled)
                job.cancelled = True

        return events_iter()
