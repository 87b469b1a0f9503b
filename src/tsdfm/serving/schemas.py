"""Request and limit schemas of ``POST /v1/completions``.

The fields follow OpenAI's completions API where it applies, so the ``openai`` package works
unchanged; ``steps`` and ``infill`` are this project's own. Every check happens here, before a
request reaches the batcher, so a bad request costs no model time and gets a 400 with a JSON
body that names the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tsdfm.serving.limits import Limits

# OpenAI fields this server knows but does not implement: refused by name (400), not silently
# ignored, so a client never believes a stop sequence or a penalty was applied.
NOT_SUPPORTED = (
    "best_of",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "presence_penalty",
    "stop",
)


class CompletionRequest(BaseModel):
    """The body of ``POST /v1/completions`` (unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid", strict=False)

    model: str | None = None
    prompt: str | list[str] | None = None
    suffix: str | None = None
    infill: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    steps: int = Field(default=8, ge=1)
    stream: bool = False
    echo: bool = False
    user: str | None = None  # accepted and ignored, as OpenAI uses it for abuse tracking
    stream_options: dict[str, Any] | None = None  # accepted and ignored

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str] | None) -> str | None:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("give one prompt per request (a string); use n for more samples")
            return v[0]
        return v


class RequestError(Exception):
    """A 4xx answer: ``status``, an OpenAI-style error body naming ``param``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = ""):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code = code or ("invalid_request" if status == 400 else "error")

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


def parse_request(payload: Any, limits: Limits) -> CompletionRequest:
    """Validate a decoded JSON body against the schema and ``limits``; RequestError if bad."""
    if not isinstance(payload, dict):
        raise RequestError(400, "the body must be a JSON object", code="invalid_json")
    harmless = {"best_of": 1, "frequency_penalty": 0, "presence_penalty": 0}
    for name in NOT_SUPPORTED:
        value = payload.get(name)
        if value is not None and value != harmless.get(name, None):
            raise RequestError(400, f"{name} is not supported by this server; leave it out", name)
    payload = {k: v for k, v in payload.items() if k not in NOT_SUPPORTED}
    try:
        req = CompletionRequest.model_validate(payload)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ())) or None
        msg = err.get("msg", "invalid value")
        if err.get("type") == "extra_forbidden":
            msg = f"unknown field {param!r}; see GET /v1/models and docs/serving.md for the fields"
        else:
            msg = f"{param}: {msg} (got {err.get('input')!r})"
        raise RequestError(400, msg, param) from None
    if req.n > limits.max_n:
        raise RequestError(400, f"n is {req.n}; this server allows at most {limits.max_n}", "n")
    if req.steps > limits.max_steps:
        raise RequestError(
            400, f"steps is {req.steps}; this server allows at most {limits.max_steps}", "steps"
        )
    if req.prompt is not None and req.infill is not None:
        raise RequestError(400, "give either prompt (a prefix) or infill (a template)", "infill")
    return req
