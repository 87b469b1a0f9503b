"""The ``tsdfm serve`` command line (parser and runner), kept here so that ``tsdfm.cli``
only wires it in."""

from __future__ import annotations

import argparse

from tsdfm.errors import TsdfmError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from tsdfm.serving.limits import Limits

    d = Limits()
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI-style completions + a page)")
    p.add_argument("--model", required=True, help="model dir or run dir (teacher or student)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto (the GPU if any), cpu, cuda, cuda:N")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="rows per forward pass")
    p.add_argument(
        "--batch-window-ms", type=float, default=d.batch_window_ms,
        help="how long an idle server waits for more requests before its first step",
    )  # fmt: skip
    p.add_argument("--max-n", type=int, default=d.max_n, help="samples per request")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="steps per request")
    p.add_argument(
        "--max-pending", type=int, default=d.max_pending, help="requests in flight (more: 503)"
    )
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"),
        help="forward pass: auto = bf16 autocast on CUDA and AMX CPUs, else fp32",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--drain-seconds", type=float, default=60.0, help="SIGTERM: wait this long")


def run(args: argparse.Namespace) -> None:
    try:
        from tsdfm.serving.server import serve
    except ImportError as e:  # fastapi / uvicorn missing
        raise TsdfmError(
            f"tsdfm serve needs the serve extra ({e.name} is missing); pip install 'tsdfm[serve]'"
        ) from None
    from tsdfm.serving.limits import Limits

    limits = Limits(
        max_n=args.max_n, max_steps=args.max_steps, max_body_bytes=args.max_body_bytes,
        max_pending=args.max_pending, max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
    )  # fmt: skip
    serve(
        args.model, args.host, args.port, args.device, limits, args.precision, args.compile,
        args.drain_seconds,
    )  # fmt: skip
