"""Server limits (``tsdfm serve`` flags); plain dataclass, importable without the serve extra."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    """What one request and the whole server may ask for (``tsdfm serve`` flags)."""

    max_n: int = 8  # samples per request
    max_steps: int = 256  # sampler steps per request
    max_body_bytes: int = 64 * 1024  # request body
    max_pending: int = 256  # requests queued or running; more get 503
    max_batch: int = 64  # rows (samples) in one batched forward pass
    batch_window_ms: float = 5.0  # how long the first request of an idle server waits for company
