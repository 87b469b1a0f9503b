"""tsdfm serve over real HTTP: the openai client, client disconnects, SIGTERM draining."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from serving_helpers import L, ThreadServer, V, free_port, save_models, tiny_denoiser  # noqa: E402

from tsdfm.data.tokenizer import Tokenizer  # noqa: E402
from tsdfm.generator import Generator  # noqa: E402
from tsdfm.serving.app import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("http-models"))


@pytest.fixture(scope="module")
def server(dirs):
    g = Generator.from_pretrained(dirs["student"], device="cpu")
    with ThreadServer(create_app(g)) as s:
        yield s


def test_openai_client_unchanged(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["student"]
    out = client.completions.create(
        model="student", prompt="1 2", max_tokens=5, n=2, temperature=0.8, seed=4,
        extra_body={"steps": 4},
    )  # fmt: skip
    assert len(out.choices) == 2 and all(len(c.text.split()) == 5 for c in out.choices)
    assert out.usage.completion_tokens == 10 and out.choices[0].finish_reason == "length"
    chunks = list(
        client.completions.create(
            model="student", prompt="1 2", max_tokens=5, n=2, temperature=0.8, seed=4,
            stream=True, extra_body={"steps": 4},
        )
    )  # fmt: skip
    assert len(chunks) == 4 + 1  # the start and every step; the last one carries the text
    for i in range(2):
        streamed = "".join(c.choices[i].text for c in chunks)
        assert streamed == out.choices[i].text
    with pytest.raises(openai.BadRequestError, match="n is 99"):
        client.completions.create(model="student", prompt="1", n=99)


def _slow(g: Generator, seconds: float) -> Generator:
    """Make every forward pass take ``seconds`` longer, so a request stays in flight."""
    forward = g.model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    g.model.forward = slow_forward
    return g


def test_client_disconnect_mid_stream_frees_its_slot(dirs):
    g = _slow(Generator.from_pretrained(dirs["teacher"], device="cpu"), 0.02)
    with ThreadServer(create_app(g)) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        body = {"prompt": "1", "steps": 200, "n": 2, "stream": True}
        with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["step"] == 0
            assert c.get("/health").json()["pending"] == 1
        # closed after the first event: the job must leave the batcher long before 200 steps
        deadline = time.monotonic() + 3.0
        while c.get("/health").json()["pending"] and time.monotonic() < deadline:
            time.sleep(0.02)
        health = c.get("/health").json()
        assert health["pending"] == 0 and health["batcher"]["steps"] < 150
        assert c.post("/v1/completions", json={"prompt": "1", "steps": 2}).status_code == 200


@pytest.mark.slow
def test_cli_serves_on_loopback_and_sigterm_drains_in_flight_requests(tmp_path):
    """`tsdfm serve` binds 127.0.0.1 by default; SIGTERM lets a running stream finish, exit 0."""
    length = 256  # long rows so that 64 steps take a while even for this tiny model
    model = tiny_denoiser("mask", length=length, dim=64)
    model.save_pretrained(tmp_path / "m", tokenizer=Tokenizer.identity(V))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tsdfm.cli", "serve", "--model", str(tmp_path / "m"),
           "--port", str(port), "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not start: {proc.stdout.read()}")
                time.sleep(0.2)
        events: list[str] = []

        def consume() -> None:
            body = {"prompt": "1", "steps": 64, "n": 8, "stream": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
                events.extend(line for line in r.iter_lines() if line.startswith("data: "))

        reader = threading.Thread(target=consume)
        reader.start()
        while len(events) < 2 and reader.is_alive():
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        reader.join(60)
        assert proc.wait(60) == 0
        assert events[-1] == "data: [DONE]" and len(events) == 64 + 2, len(events)
        assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
        out = proc.stdout.read()
        assert f"http://127.0.0.1:{port}/" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_serve_flags_exit_2(tmp_path, capsys):
    from tsdfm.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err


assert L < 256  # the SIGTERM test's model must be longer than the shared tiny ones
