"""Shared by the serving tests: tiny model directories and a real uvicorn server in a thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch

from tsdfm.data.tokenizer import Tokenizer
from tsdfm.models import Denoiser, DenoiserConfig, build_student

V, L = 8, 12  # identity tokenizer: ids 0..7 are the text "0".."7", [MASK] = 8


def tiny_denoiser(source: str = "mask", length: int = L, dim: int = 32) -> Denoiser:
    torch.manual_seed(0)
    cfg = DenoiserConfig(
        vocab_size=V + 1, num_classes=V, max_len=length, dim=dim, n_layers=1, n_heads=2,
        time_cond=source == "uniform", source=source,
    )  # fmt: skip
    return Denoiser(cfg)


def save_models(root: Path) -> dict[str, Path]:
    """A mask teacher (as a run dir), a uniform-source teacher, a student, a mixture student
    and a chain student (codes scaled up, so a code drawn differently changes the text)."""
    tok = Tokenizer.identity(V)
    tiny_denoiser("mask").save_pretrained(root / "teacher" / "model", tokenizer=tok)
    tiny_denoiser("uniform").save_pretrained(root / "uniform", tokenizer=tok)
    build_student(tiny_denoiser("mask")).save_pretrained(root / "student", tokenizer=tok)
    mixture = build_student(tiny_denoiser("mask"), latent_codes=4)
    with torch.no_grad():
        mixture.latent_emb.weight.normal_(0, 3.0)
    mixture.save_pretrained(root / "mixture", tokenizer=tok)
    chain = build_student(tiny_denoiser("mask"), latent_codes=3, latent_chain=True)
    with torch.no_grad():
        chain.chain.shift.normal_(0, 3.0)
    chain.save_pretrained(root / "chain", tokenizer=tok)
    return {k: root / k for k in ("teacher", "uniform", "student", "mixture", "chain")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn serving ``app`` on a free loopback port from a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
