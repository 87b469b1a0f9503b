"""Load test of ``tsdfm serve`` on loopback: does request batching reach the sampler's own batch?

One run, one machine, in this order:

1. the sampler's own throughput at batch 1 and batch 32 (``draw_samples`` in this process,
   median of ``--repeats``; the ceiling batching can reach);
2. a server (``tsdfm serve`` in a subprocess, 127.0.0.1, the same thread count) loaded by
   closed-loop clients: each of C clients sends one request (``n = 1``, ``steps``) and sends the
   next as soon as the answer arrives, for ``--duration`` seconds, at C = 1, 32 and 64;
3. per phase: completed requests per second, p50 / p99 latency, failed requests, and the
   server's resident memory (``/proc/PID/status`` VmRSS) at the phase's start, end and peak.

The acceptance figure is ``throughput(C = 32) / sampler(batch 32)``. Everything is bounded:
at most 64 clients, ``--duration`` seconds per phase, loopback only.

Usage:
    python benchmarks/serve_load.py --model runs/tiny/student-blind [--steps 8] [--duration 30]
    python benchmarks/serve_load.py --quick     # a random tiny model, seconds, checks the script
Writes benchmarks/results/serve_load.{json,md} (serve_load-quick.* with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tsdfm.generation import draw_samples
from tsdfm.generator import resolve_model_dir
from tsdfm.models import load_pretrained

ROOT = Path(__file__).resolve().parent
CONCURRENCY = (1, 32, 64, 32)  # 32 again at the end: is memory flat after the peak?


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sampler_throughput(model_dir: Path, steps: int, batch: int, repeats: int) -> dict:
    """Samples per second of ``draw_samples`` at ``batch`` (warm-up, then the median)."""
    loaded = load_pretrained(model_dir)
    times = []
    for r in range(repeats + 1):
        meta = draw_samples(
            model_dir, steps=steps, num=batch, seed=r, batch_size=batch, progress=False,
            model_and_tokenizer=loaded, device="cpu",
        ).meta  # fmt: skip
        if r:  # the first call is the warm-up
            times.append(meta["seconds"])
    sec = statistics.median(times)
    return {"batch": batch, "seconds": sec, "samples_per_s": batch / sec, "runs": times}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, port: int, threads: int, max_batch: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    src = str(ROOT.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "tsdfm.cli", "serve", "--model", str(model_dir), "--port",
           str(port), "--device", "cpu", "--max-batch", str(max_batch), "--max-pending", "256"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_ready(url: str, proc: subprocess.Popen) -> None:
    import httpx

    async with httpx.AsyncClient() as c:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if (await c.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start in 60 s")


async def phase(url: str, pid: int, clients: int, duration: float, steps: int) -> dict:
    """``clients`` closed-loop clients for ``duration`` seconds; latency of completed requests."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    rss = [rss_mib(pid)]
    stop = time.perf_counter() + duration
    body = {"prompt": "", "n": 1, "steps": steps}
    limits = httpx.Limits(max_connections=clients + 4)

    async def client(c: httpx.AsyncClient, k: int) -> None:
        seed = k * 1_000_000
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                r = await c.post(f"{url}/v1/completions", json={**body, "seed": seed})
                if r.status_code == 200 and r.json()["choices"][0]["text"] is not None:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                failures.append(repr(e))
            seed += 1

    async def memory() -> None:
        while time.perf_counter() < stop:
            await asyncio.sleep(0.5)
            rss.append(rss_mib(pid))

    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=limits) as c:
        await asyncio.gather(memory(), *(client(c, k) for k in range(clients)))
    wall = time.perf_counter() - began  # includes the requests still running at ``stop``
    rss.append(rss_mib(pid))
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    return {
        "clients": clients,
        "completed": len(lat),
        "failed": len(failures),
        "failures": failures[:5],
        "wall_s": wall,
        "requests_per_s": len(lat) / wall,
        "p50_s": pct(0.50),
        "p99_s": pct(0.99),
        "rss_mib_start": rss[0],
        "rss_mib_end": rss[-1],
        "rss_mib_peak": max(rss),
    }


def quick_model() -> Path:
    from tsdfm.data.tokenizer import Tokenizer
    from tsdfm.models import Denoiser, DenoiserConfig, build_student

    torch.manual_seed(0)
    cfg = DenoiserConfig(67, 66, 16, dim=32, n_layers=1, n_heads=2)
    out = Path(tempfile.mkdtemp()) / "student"
    build_student(Denoiser(cfg)).save_pretrained(out, tokenizer=Tokenizer.identity(66))
    return out


def markdown(res: dict) -> str:
    s = res["sampler"]
    lines = [
        "# tsdfm serve under load (loopback)",
        "",
        f"Model `{res['model']}`, {res['steps']} steps, n = 1 per request, closed-loop clients, "
        f"{res['duration_s']:.0f} s per phase; {res['threads']} torch threads on "
        f"{res['machine']}. Load average before the run: {res['load_before']}, after: "
        f"{res['load_after']} (a shared machine: other jobs ran alongside).",
        "",
        f"Sampler alone (`draw_samples`): batch 1 {s['b1']['samples_per_s']:.2f} samples/s, "
        f"batch 32 {s['b32']['samples_per_s']:.2f} samples/s "
        f"({s['b32']['samples_per_s'] / s['b1']['samples_per_s']:.2f}x per sample).",
        "",
        "| clients | completed | failed | requests/s | vs sampler batch 32 | p50 (s) | p99 (s) "
        "| server RSS start / end / peak (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in res["phases"]:
        lines.append(
            f"| {p['clients']} | {p['completed']} | {p['failed']} | {p['requests_per_s']:.2f} | "
            f"{p['requests_per_s'] / s['b32']['samples_per_s']:.1%} | {p['p50_s']:.3f} | "
            f"{p['p99_s']:.3f} | {p['rss_mib_start']:.0f} / {p['rss_mib_end']:.0f} / "
            f"{p['rss_mib_peak']:.0f} |"
        )
    lines += ["", f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="student run dir or model dir")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--clients", type=int, nargs="+", default=list(CONCURRENCY))
    ap.add_argument("--quick", action="store_true", help="random tiny model, 2 s phases")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.duration, args.repeats = str(quick_model()), 2.0, 1
    if not args.model:
        ap.error("--model is required (or --quick)")
    if max(args.clients) > 64 or args.duration > 120:
        ap.error("bounded by design: at most 64 clients and 120 s per phase")
    torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir(args.model)
    load_before = os.getloadavg()
    sampler = {
        "b1": sampler_throughput(model_dir, args.steps, 1, args.repeats),
        "b32": sampler_throughput(model_dir, args.steps, 32, args.repeats),
    }
    port = free_port()
    proc = start_server(model_dir, port, args.threads, args.max_batch)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(url, proc))
        phases = [
            asyncio.run(phase(url, proc.pid, c, args.duration, args.steps)) for c in args.clients
        ]
    finally:
        proc.terminate()
        proc.wait(120)
    res = {
        "model": str(model_dir),
        "steps": args.steps,
        "duration_s": args.duration,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "sampler": sampler,
        "phases": phases,
        "command": "python benchmarks/serve_load.py " + " ".join(argv or sys.argv[1:]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "serve_load-quick" if args.quick else "serve_load"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
