"""The ASGI app (FastAPI): routes, JSON error bodies, the static page, the batcher's lifetime.

Every error a client can cause is a 4xx with an OpenAI-style JSON body
(``{"error": {"message", "type", "param", "code"}}``) and leaves the server serving; anything
else is a 500 with the same shape, never an HTML traceback.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from tsdfm.generator import Generator
from tsdfm.serving.batcher import Batcher
from tsdfm.serving.completions import Completions
from tsdfm.serving.schemas import Limits, RequestError, parse_request

STATIC = Path(str(files("tsdfm.serving") / "static"))


def model_card(g: Generator, model_id: str) -> dict[str, Any]:
    """``GET /v1/models`` entry: OpenAI's fields plus what a client needs to call this model."""
    c = g.config
    extra = dict(c.extra)
    student = bool(getattr(c, "dt_cond", False))
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "tsdfm",
        "tsdfm": {
            "path": g.name,
            "kind": "student" if student else "teacher",
            "method": extra.get("method", "teacher"),
            "source": c.source,
            "max_len": c.max_len,
            "vocab_size": c.vocab_size,
            "dim": c.dim,
            "n_layers": c.n_layers,
            "n_heads": c.n_heads,
            "scheduler": c.scheduler,
            "time_cond": c.time_cond,
            "dt_cond": student,
            # A student learned jumps of dt = 1/teacher_steps up to 1 (powers of two); 8 or
            # fewer steps is what it is for. A teacher is meant for many steps.
            "distilled_from_steps": extra.get("teacher_steps") if student else None,
            "default_steps": 8,
            "mask_token": "[MASK]",
        },
    }


def _error(status: int, message: str, param: str | None = None, code: str = "") -> JSONResponse:
    return JSONResponse(RequestError(status, message, param, code).body(), status_code=status)


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing more than ``limit`` bytes (413) or bad JSON (400) early."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body over {limit} bytes", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"request body over {limit} bytes", code="body_too_large")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"malformed JSON body: {e}", code="invalid_json") from None


def create_app(
    g: Generator, limits: Limits | None = None, dtype: torch.dtype | None = None
) -> FastAPI:
    """The app serving ``g``; the batcher starts and stops with the app's lifespan."""
    from tsdfm.errors import TsdfmError
    from tsdfm.models import CausalLM

    if isinstance(g.model, CausalLM):
        raise TsdfmError(
            f"{g.name} is a causal LM; tsdfm serve serves DFM models (a teacher or a student). "
            "Use tsdfm generate for the AR baseline"
        )
    limits = limits or Limits()
    model_id = Path(g.name).parent.name if Path(g.name).name == "model" else Path(g.name).name
    batcher = Batcher(g.model, limits, dtype)
    completions = Completions(g, batcher, model_id or "tsdfm")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="tsdfm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.completions = batcher, completions

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), code="http_error")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return _error(400, str(e.errors()[:1]))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, e: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(e).__name__}", code="internal_error")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_id,
            "pending": batcher.pending,
            "device": str(g.device),
            "precision": str(dtype).replace("torch.", "") if dtype else "float32",
            "batcher": dict(batcher.stats),
            "limits": limits.__dict__,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(g, model_id)]}

    @app.post("/v1/completions")
    async def complete(request: Request):
        req = parse_request(await read_json(request, limits.max_body_bytes), limits)
        if req.stream:
            events = await completions.stream(req)
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await completions.complete(req, request.is_disconnected)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
