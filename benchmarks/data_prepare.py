"""Streaming data preparation at corpus scale: text MB/s and peak memory, 1 vs N processes.

A corpus of generated text (no download: Zipf-distributed made-up words, documents of 50-600
words, JSON lines) is written under ``--tmp`` as ``--files`` files of equal size; the corpora of
the sizes asked for are directories holding the first k of them (symlinks, so the text is
generated once). Each size is prepared by the real CLI, ``tsdfm data prepare`` in a fresh
process, with each ``--procs`` value in turn (interleaved, so a change of machine load hits
both alike), with the default settings: BPE of 8,192 tokens trained on the default sample
(``data.tokenizer_sample_chars``), seq_len 1,024.

Measured per run: wall time of the whole command, the manifest's stage timings, text MB/s of
the encode stage (corpus bytes / encode seconds: reading, splitting, tokenising, writing
shards) and of the whole run, peak RSS of the whole process tree (the sum over the command
and its workers, sampled every 0.1 s from /proc) and the largest single-process peak RSS
(``getrusage``, exact). The limit: the tokenizer library's own ``encode_batch`` (its Rust
threads on every core) on the first ``--limit-mb`` MB of the same text with the same
tokenizer, timed before and after the runs. The load average is recorded with every run:
the machine may be shared.

Usage: python benchmarks/data_prepare.py [--sizes-gb 0.25 0.5 1] [--procs 1 2]
       [--tmp /tmp/tsdfm-data-bench] [--keep]
Writes benchmarks/results/data_prepare.json and data_prepare.md; deletes --tmp afterwards.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
CONFIG = """\
name: data-bench
data:
  corpus: {corpus}
  seq_len: 1024
  vocab_size: 8192
"""


# --------------------------------------------------------------------------- the corpus
def _words(rng: random.Random, n: int) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = range(26, 0, -1)  # frequent letters first, roughly as in English
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choices(letters, weights=weights, k=rng.randint(1, 10))))
    return sorted(out)


def generate_file(path: Path, n_bytes: int, seed: int) -> None:
    """JSON lines of documents (ids ``<seed>-<i>``) until the file holds `n_bytes` bytes."""
    rng = random.Random(seed)
    vocab = _words(random.Random(0), 30_000)  # one vocabulary for every file
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    written, i = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            words = rng.choices(vocab, cum_weights=cum, k=rng.randint(50, 600))
            sentences, start = [], 0
            while start < len(words):
                end = start + rng.randint(5, 25)
                sentences.append(" ".join(words[start:end]).capitalize() + ".")
                start = end
            line = json.dumps({"id": f"{seed}-{i}", "text": " ".join(sentences)}) + "\n"
            f.write(line)
            written += len(line)
            i += 1


def text_bytes(paths: list[Path]) -> int:
    """UTF-8 bytes of document text (what MB/s counts), not of the JSON around it."""
    total = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                total += len(json.loads(line)["text"].encode("utf-8"))
    return total


# --------------------------------------------------------------------------- measuring
def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, in kB."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _rss_kb(p)
        stack.extend(_children(p))
    return total


def run_measured(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run `cmd`, sampling its process tree's RSS every 0.1 s."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss_kb(proc.pid))
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "wall_s": wall,
        "peak_tree_rss_mb": peak / 1024,
        # largest single descendant so far; exact, but only grows: meaningful when it does
        "max_process_rss_mb": maxrss / 1024 if maxrss > before else None,
    }


_LIMIT = """
import json, sys, time
sys.path.insert(0, {src!r})
from pathlib import Path
from tsdfm.data.tokenizer import Tokenizer
tok = Tokenizer.load(Path({tok!r}))
texts, size = [], 0
with open({path!r}, encoding="utf-8") as f:
    for line in f:
        texts.append(json.loads(line)["text"]); size += len(texts[-1].encode("utf-8"))
        if size >= {limit}:
            break
t0 = time.perf_counter()
for i in range(0, len(texts), 512):
    tok._hf.encode_batch(texts[i:i + 512])
print(json.dumps({{"mb": size / 1e6, "s": time.perf_counter() - t0}}))
"""


def library_limit(tokenizer_dir: Path, path: Path, limit_mb: float) -> dict:
    """MB/s of the tokenizer library's own batch encode (fresh processes): with its threads
    on every core (the limit), and on one thread (the control: their ratio is the parallel
    speed-up this machine offered at that moment, whatever tsdfm does)."""
    code = _LIMIT.format(src=str(SRC), tok=str(tokenizer_dir), path=str(path), limit=limit_mb * 1e6)
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    load = os.getloadavg()
    res = {}
    for label, extra in (("threads", {}), ("one_thread", {"TOKENIZERS_PARALLELISM": "false"})):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        res[label] = json.loads(out.stdout)
    r, one = res["threads"], res["one_thread"]
    return {
        "mb": r["mb"],
        "s": r["s"],
        "mb_per_s": r["mb"] / r["s"],
        "one_thread_mb_per_s": one["mb"] / one["s"],
        "load": load,
    }


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--files", type=int, default=4, help="generated files (largest size / this)")
    ap.add_argument("--limit-mb", type=float, default=50.0)
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/tsdfm-data-bench"))
    ap.add_argument("--keep", action="store_true", help="keep --tmp (corpus and outputs)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()

    largest = max(args.sizes_gb) * 1e9
    per_file = largest / args.files
    need = largest * 3.5  # text + shards + split files (~2 x 0.6 B/char) + slack
    free = shutil.disk_usage(args.tmp.parent).free
    if free < need:
        raise SystemExit(f"{args.tmp.parent} has {free / 1e9:.1f} GB free, needs {need / 1e9:.1f}")
    args.tmp.mkdir(parents=True, exist_ok=True)
    try:
        results = bench(args, per_file)
    finally:
        if not args.keep:
            shutil.rmtree(args.tmp, ignore_errors=True)
    write(results, args.results)


def bench(args, per_file: float) -> dict:
    files = []
    t0 = time.perf_counter()
    for i in range(args.files):
        path = args.tmp / "files" / f"part{i:02d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            generate_file(path, int(per_file), seed=i + 1)
        files.append(path)
    print(f"corpus generated in {time.perf_counter() - t0:.0f} s", flush=True)

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("TOKENIZERS_PARALLELISM", None)
    runs, limits, tokenizer_dir = [], [], None
    for size in args.sizes_gb:
        k = max(1, round(size * 1e9 / per_file))
        corpus = args.tmp / f"corpus-{size}gb"
        corpus.mkdir(exist_ok=True)
        for path in files[:k]:
            link = corpus / path.name
            if not link.exists():
                link.symlink_to(path)
        n_text = text_bytes(files[:k])
        config = args.tmp / f"corpus-{size}gb.yaml"
        config.write_text(CONFIG.format(corpus=corpus))
        for procs in args.procs:
            out = args.tmp / f"data-{size}gb-{procs}p"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "tsdfm", "data", "prepare", "--config", str(config)]
            cmd += ["--out", str(out), "--num-proc", str(procs), "--no-progress"]
            load = os.getloadavg()
            r = run_measured(cmd, env, args.tmp / f"{out.name}.log")
            manifest = json.loads((out / "manifest.json").read_text())
            timings = manifest["timings_s"]
            r.update(
                size_gb=size,
                procs=procs,
                text_mb=n_text / 1e6,
                files=k,
                timings_s=timings,
                encode_mb_per_s=n_text / 1e6 / timings["encode"],
                total_mb_per_s=n_text / 1e6 / r["wall_s"],
                train_tokens=manifest["splits"]["train"]["tokens"],
                shards=manifest["shards"],
                train_sha256=manifest["splits"]["train"]["sha256"],
                load_before=load,
                load_after=os.getloadavg(),
            )
            runs.append(r)
            print(json.dumps(r), flush=True)
            if tokenizer_dir is None:  # the limit, first measured as early as possible
                tokenizer_dir = args.tmp / "tokenizer"
                shutil.copytree(out / "tokenizer", tokenizer_dir)
                limits.append(library_limit(tokenizer_dir, files[0], args.limit_mb))
            shutil.rmtree(out)
        if len(args.procs) > 1:
            same = {r["train_sha256"] for r in runs if r["size_gb"] == size}
            assert len(same) == 1, f"{size} GB: train.bin differs between process counts"
    limits.append(library_limit(tokenizer_dir, files[0], args.limit_mb))  # and after the runs
    return {
        "machine": {
            "nproc": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "runs": runs,
        "limit": limits,
    }


def write(results: dict, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data_prepare.json").write_text(json.dumps(results, indent=2) + "\n")
    runs = results["runs"]
    limit = max(x["mb_per_s"] for x in results["limit"])  # the faster of the two: stricter
    lines = [
        "# Streaming data preparation (`benchmarks/data_prepare.py`)",
        "",
        f"Machine: {results['machine']['nproc']} cores, {results['machine']['platform']}; "
        "load average (1 min) before each run in the table: the machine was shared with "
        "other jobs, so compare ratios within this run.",
        "",
        "| corpus | procs | wall s | tokenizer s | encode s | encode MB/s | vs 1 proc | "
        "of library limit | peak RSS tree MB | max process RSS MB | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        base = next(x for x in runs if x["size_gb"] == r["size_gb"] and x["procs"] == 1)
        t = r["timings_s"]
        single = r["max_process_rss_mb"]
        lines.append(
            f"| {r['size_gb']} GB ({r['text_mb']:.0f} MB text) | {r['procs']} | "
            f"{r['wall_s']:.0f} | {t['tokenizer']:.0f} | {t['encode']:.0f} | "
            f"{r['encode_mb_per_s']:.2f} | {r['encode_mb_per_s'] / base['encode_mb_per_s']:.2f}x | "
            f"{r['encode_mb_per_s'] / limit:.2f} | {r['peak_tree_rss_mb']:.0f} | "
            f"{'-' if single is None else f'{single:.0f}'} | {r['load_before'][0]:.1f} |"
        )
    each = ", ".join(
        f"{x['mb_per_s']:.2f} MB/s at load {x['load'][0]:.1f} (one thread: "
        f"{x['one_thread_mb_per_s']:.2f}, so {x['mb_per_s'] / x['one_thread_mb_per_s']:.2f}x "
        "from the library's own threads)"
        for x in results["limit"]
    )
    lines += [
        "",
        f"Library limit: `encode_batch` with the library's threads on all cores on "
        f"{results['limit'][0]['mb']:.0f} MB of the same text with the same tokenizer, after "
        f"the first run and after the last ({each}); the columns use the faster, "
        f"**{limit:.2f} MB/s**.",
        "",
        "MB/s counts document text (UTF-8 bytes) over the encode stage (read, split, tokenise, "
        "write shards); wall includes start-up, tokenizer training on the bounded sample and "
        "assembling the split files. 'max process RSS' is the largest single process (exact, "
        "`getrusage`; '-' where it did not exceed an earlier run's), 'peak RSS tree' the sum "
        "over the command and its workers (sampled every 0.1 s).",
    ]
    text = "\n".join(lines) + "\n"
    (directory / "data_prepare.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
