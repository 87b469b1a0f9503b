"""``tsdfm serve``: load a model directory and run the app under uvicorn.

SIGTERM (and Ctrl-C) drain: uvicorn stops accepting connections, waits for the requests in
flight (streams included) to finish, then the app's lifespan stops the batcher, and the process
exits 0. ``drain_seconds`` bounds the wait. The default host is loopback: exposing the server
to a network is a decision the user makes with ``--host 0.0.0.0``.
"""

from __future__ import annotations

import signal

from tsdfm.errors import TsdfmError
from tsdfm.serving.limits import Limits


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    limits: Limits | None = None,
    precision: str = "auto",
    compile_model: bool = False,
    drain_seconds: float = 60.0,
    log_level: str = "info",
) -> None:
    import uvicorn

    from tsdfm.generator import Generator
    from tsdfm.inference import maybe_compile, sampling_dtype
    from tsdfm.serving.app import create_app

    if not 0 <= port <= 65535:
        raise TsdfmError(f"--port must be in 0..65535, got {port}")
    limits = limits or Limits()
    for name in ("max_n", "max_steps", "max_batch", "max_pending", "max_body_bytes"):
        if getattr(limits, name) < 1:
            raise TsdfmError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(limits, name)}"
            )
    if limits.batch_window_ms < 0:
        raise TsdfmError(f"--batch-window-ms must be >= 0, got {limits.batch_window_ms}")
    g = Generator.from_pretrained(model, device=device)
    dtype = sampling_dtype(precision, g.device)
    g.model = maybe_compile(g.model, compile_model)
    app = create_app(g, limits, dtype)
    print(
        f"serving {g.name} on http://{host}:{port}/ ({g.device}, "
        f"{'fp32' if dtype is None else 'bf16 autocast'}{', compiled' if compile_model else ''})",
        flush=True,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=drain_seconds,
        limit_concurrency=limits.max_pending + 64,
    )
    _server_class()(config).run()


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn re-raises a captured SIGTERM after its graceful shutdown, so the process
        dies of the signal (status -15) even though every request finished. A drained SIGTERM
        is a normal end here: the process exits 0."""

        def handle_exit(self, sig: int, frame) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if sig == signal.SIGTERM and captured and captured[-1] == sig:
                captured.pop()

    return DrainingServer
