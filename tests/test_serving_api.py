"""tsdfm serve's API in-process (FastAPI TestClient): completions, streaming, batching, errors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serving_helpers import L, save_models  # noqa: E402

from tsdfm.generator import Generator  # noqa: E402
from tsdfm.serving.app import create_app  # noqa: E402
from tsdfm.serving.batcher import Batcher, Job  # noqa: E402
from tsdfm.serving.limits import Limits  # noqa: E402
from tsdfm.serving.schemas import RequestError  # noqa: E402


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("serve-models"))


@pytest.fixture(scope="module")
def teacher(dirs):
    return Generator.from_pretrained(dirs["teacher"], device="cpu")


@pytest.fixture(scope="module")
def client(teacher):
    with TestClient(create_app(teacher, Limits(max_n=4, max_steps=64, max_body_bytes=2048))) as c:
        yield c


def _post(client, **body):
    return client.post("/v1/completions", json=body)


def _events(text: str) -> list:
    chunks = [c.removeprefix("data: ") for c in text.split("\n\n") if c.strip()]
    assert chunks[-1] == "[DONE]"
    return [json.loads(c) for c in chunks[:-1]]


def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    card = client.get("/v1/models").json()["data"][0]
    assert card["id"] == "teacher" and card["object"] == "model"
    assert card["tsdfm"]["max_len"] == L and card["tsdfm"]["source"] == "mask"
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("model", ["teacher", "uniform", "student", "mixture", "chain"])
def test_completion_equals_generator_with_the_same_seed(dirs, model):
    """Batching changes no sample: the server draws exactly what Generator.generate draws."""
    g = Generator.from_pretrained(dirs[model], device="cpu")
    with TestClient(create_app(g)) as c:
        r = _post(c, prompt="3 1 4", n=3, steps=5, seed=11, top_p=0.9)
        assert r.status_code == 200, r.text
        body = r.json()
    _, ids = g.generate(3, 5, seed=11, prompt="3 1 4", top_p=0.9, return_ids=True)
    want = g.tokenizer.decode_batch(ids[:, 3:].tolist())
    assert [c["text"] for c in body["choices"]] == want
    assert body["seed"] == 11 and body["usage"]["completion_tokens"] == 3 * (L - 3)
    assert all(c["finish_reason"] == "length" for c in body["choices"])


def test_concurrent_requests_share_forward_passes_and_keep_their_samples(teacher):
    """Requests arriving together run in one batched forward per step, each with its own seed."""
    app = create_app(teacher, Limits(batch_window_ms=300))
    bodies = [
        dict(prompt="2", n=2, steps=6, seed=s, temperature=t)
        for s, t in enumerate((1, 0.7, 1, 0.5))
    ]
    bodies.append(dict(infill="1 [MASK] [MASK] 5", steps=3, seed=9))  # other steps: also merged
    with TestClient(app) as c, ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: _post(c, **b).json(), bodies))
        stats = c.get("/health").json()["batcher"]
    assert stats["max_rows"] > 2, (answers, stats)  # more than one request's rows in a forward pass
    with TestClient(create_app(teacher)) as c:  # each one alone
        alone = [_post(c, **b).json() for b in bodies]
    assert [a.get("choices") for a in answers] == [a.get("choices") for a in alone], (
        answers,
        alone,
    )


@pytest.mark.parametrize("model", ["student", "uniform", "chain"])
def test_batched_head_at_jumps_keeps_every_requests_samples(dirs, model):
    """Models that are not forward-cached take the head-at-switching-positions path in the
    batcher: merged requests (other steps, temperatures, top-p) still draw what each draws
    alone, which is what Generator.generate draws."""
    g = Generator.from_pretrained(dirs[model], device="cpu")
    bodies = [
        dict(prompt="2", n=2, steps=6, seed=1, top_p=0.8),
        dict(prompt="4 4", n=3, steps=4, seed=2, temperature=0.7),
        dict(infill="1 [MASK] [MASK] 5", steps=3, seed=9),
    ]
    with TestClient(create_app(g, Limits(batch_window_ms=300))) as c:
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: _post(c, **b).json(), bodies))
        stats = c.get("/health").json()["batcher"]
    assert stats["max_rows"] > 3, (answers, stats)
    _, ids = g.generate(2, 6, seed=1, prompt="2", return_ids=True, top_p=0.8)
    assert [a["text"] for a in answers[0]["choices"]] == g.tokenizer.decode_batch(
        ids[:, 1:].tolist()
    )
    with TestClient(create_app(g)) as c:
        alone = [_post(c, **b).json() for b in bodies]
    assert [a["choices"] for a in answers] == [a["choices"] for a in alone]


def test_stream_sends_every_step_then_the_same_final_text(client):
    plain = _post(client, prompt="5 5", steps=4, seed=3).json()
    r = _post(client, prompt="5 5", steps=4, seed=3, stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert [e["step"] for e in events] == [0, 1, 2, 3, 4]
    assert events[0]["fixed"] == [0, 1]
    masked = [e["choices"][0]["masked"] for e in events]
    assert masked[0] == L - 2 and masked[-1] == 0 and masked == sorted(masked, reverse=True)
    for before, after in zip(events, events[1:], strict=False):  # "changed" says what moved
        a, b = before["choices"][0]["tokens"], after["choices"][0]["tokens"]
        assert after["choices"][0]["changed"] == [i for i in range(L) if a[i] != b[i]]
    assert "".join(e["choices"][0]["text"] for e in events) == plain["choices"][0]["text"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_infill_echo_suffix_and_greedy(client, teacher):
    r = _post(client, infill="1 [MASK] [MASK] 5", suffix="7", max_tokens=2, seed=0).json()
    toks = r["choices"][0]["text"].split()
    assert len(toks) == 4 + 2 and toks[0] == "1" and toks[3] == "5"  # suffix is not echoed
    r = _post(client, prompt="4", echo=True, max_tokens=3, seed=0).json()
    assert r["choices"][0]["text"].startswith("4 ") and len(r["choices"][0]["text"].split()) == 4
    a = _post(client, prompt="4", temperature=0, n=2, seed=1).json()["choices"]
    b = _post(client, prompt="4", temperature=0, n=2, seed=2).json()["choices"]
    assert a[0]["text"] and len({c["text"] for c in a + b}) <= 4  # runs; argmax is top_k=1


BAD = [
    ({"prompt": "1", "temperature": -1}, "temperature"),
    ({"prompt": "1", "temperature": "hot"}, "temperature"),
    ({"prompt": "1", "top_p": 0}, "top_p"),
    ({"prompt": "1", "n": 5}, "n"),  # the fixture allows 4
    ({"prompt": "1", "n": 0}, "n"),
    ({"prompt": "1", "steps": 0}, "steps"),
    ({"prompt": "1", "steps": 65}, "steps"),
    ({"prompt": "1", "max_tokens": L}, "max_tokens"),
    ({"prompt": " ".join(["1"] * L)}, "prompt"),
    ({"prompt": ["1", "2"]}, "prompt"),
    ({"prompt": "1", "infill": "[MASK]"}, "infill"),
    ({"infill": "no slots"}, "infill"),
    ({"prompt": "1", "logprobs": 2}, "logprobs"),
    ({"prompt": "1", "stop": ["\n"]}, "stop"),
    ({"prompt": "1", "colour": "red"}, "colour"),
    ({"prompt": "1", "seed": -1}, "seed"),
]


@pytest.mark.parametrize(("body", "param"), BAD)
def test_bad_requests_get_400_naming_the_field(client, body, param):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_malformed_oversized_and_unknown_routes_get_json_errors(client):
    r = client.post(
        "/v1/completions", content=b'{"prompt": "1",', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert client.post("/v1/completions", content=b"[1, 2]").status_code == 400
    r = client.post("/v1/completions", json={"prompt": "1" * 4000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert client.get("/nope").json()["error"]["code"] == "http_error"
    assert client.get("/v1/completions").status_code == 405
    assert _post(client, prompt="1", steps=2).status_code == 200  # still serving


def test_busy_server_refuses_with_503_and_frees_slots_on_cancel(teacher):
    b = Batcher(teacher.model, Limits(max_pending=1))  # not started: jobs stay queued
    x = torch.full((1, L), teacher.mask_id)

    def job() -> Job:
        return Job(x, None, torch.Generator().manual_seed(0), 2, emit=lambda e: None)

    first = job()
    b.submit(first)
    with pytest.raises(RequestError) as e:
        b.submit(job())
    assert e.value.status == 503 and e.value.body()["error"]["code"] == "overloaded"
    first.cancelled = True
    b.start()
    for _ in range(200):
        if b.pending == 0:
            break
        import time

        time.sleep(0.01)
    assert b.pending == 0
    b.submit(job())  # the slot is free again
    b.stop()


def test_causal_lm_is_refused_with_a_clear_error(tmp_path):
    from tsdfm.data.tokenizer import Tokenizer
    from tsdfm.errors import TsdfmError
    from tsdfm.models import CausalConfig, CausalLM

    CausalLM(CausalConfig(9, 8, L, dim=32, n_layers=1, n_heads=2)).save_pretrained(
        tmp_path / "ar", tokenizer=Tokenizer.identity(8)
    )
    with pytest.raises(TsdfmError, match="causal LM"):
        create_app(Generator.from_pretrained(tmp_path / "ar", device="cpu"))


@pytest.mark.slow
def test_compiled_model_serves_the_same_samples(dirs):
    """``tsdfm serve --compile``: torch.compile(dynamic=True) across batch sizes, same draws."""
    from tsdfm.inference import maybe_compile

    g = Generator.from_pretrained(dirs["student"], device="cpu")
    body = dict(prompt="1 2", steps=4, seed=5, n=3)
    with TestClient(create_app(g)) as c:
        eager = _post(c, **body).json()["choices"]
    g.model = maybe_compile(g.model, True)
    with TestClient(create_app(g)) as c:
        compiled = _post(c, **body).json()["choices"]
        assert _post(c, **{**body, "n": 5}).status_code == 200  # another batch size
    assert [x["text"] for x in compiled] == [x["text"] for x in eager]
