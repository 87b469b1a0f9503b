"""Sampling speed: the few-step student against the 1,024-step teacher and the AR baseline.

The point of a few-step student is wall-clock, so this measures what a user waits for, on one
device and thread count, for the same batch: the student at 1/2/4/8/16 steps, the teacher at
1,024 steps with forward caching off and on (DESIGN section 5: caching cuts the teacher's actual
forward passes to about L, so the honest speed-up is against the cached teacher), and the
autoregressive baseline with its KV cache. Every call goes through
:func:`tsdfm.generation.draw_samples`, the code path evaluation uses, so the figures are those
of the report. Each row: warm-up, then the median of ``--repeats`` timed runs (seeds 0, 1, ...;
timed round-robin across rows, so a drifting load falls on every row alike),
ms per sample, tokens/s, nominal and actual forward passes (NFE).

Without model directories (or with ``--random``) the models are randomly initialised with the
config's shapes (configs/tiny.yaml: L = 128, 4,099 ids). Speed does not depend on the weights,
with one exception: the cached teacher's actual NFE depends on when positions unmask. For the
mask source that is decided by the sampler's uniform draws alone (a masked position unmasks with
probability ``(kappa(t+h) - kappa(t)) / (1 - kappa(t))``, whatever the denoiser says), so random
weights give the same NFE as trained ones under the same seed.

``--compare DIR`` times a second student (a mixture or chain student, docs/mixture.md) at the
headline steps beside the first, and reports its cost per sample as a ratio to the student's
(``compare8_cost_vs_student``, ratio of medians; ``compare8_cost_vs_student_paired``, median of
the per-round ratios; and to the student's full-head row, when measured).

Usage:
    python benchmarks/speed.py [--teacher DIR --student DIR --ar DIR] [--config configs/tiny.yaml]
    python benchmarks/speed.py --student runs/m/student-blind-s0 --compare runs/m/student-chain-k8-s0 \
        --config configs/markov.yaml --skip-teacher --variants full-head --batch-sizes 1 32
    python benchmarks/speed.py --quick --random     # tiny shapes, seconds, for checking the script
Writes benchmarks/results/speed.{json,md} (speed-quick.* with --quick; --out to change the folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from tsdfm.config import ExperimentConfig, ModelConfig, load_config
from tsdfm.data.tokenizer import Tokenizer
from tsdfm.errors import TsdfmError
from tsdfm.generation import draw_samples
from tsdfm.generator import resolve_model_dir
from tsdfm.inference import autocast, cpu_has_amx, maybe_compile, sampling_dtype
from tsdfm.models import (
    CausalConfig,
    CausalLM,
    Denoiser,
    DenoiserConfig,
    build_student,
    count_parameters,
    load_pretrained,
)

ROOT = Path(__file__).resolve().parent
QUICK = ModelConfig(dim=32, n_layers=1, n_heads=2)  # with L = 16 and 67 ids
WARMUP_MAX_STEPS = 16  # per-step work does not change with the step count


def vocab_of(cfg: ExperimentConfig) -> int:
    """Total ids: BPE size + [EOS] [PAD] [MASK], or markov V + [MASK]."""
    return cfg.data.markov.vocab_size + 1 if cfg.data.is_markov else cfg.data.vocab_size + 3


def random_models(cfg: ExperimentConfig, quick: bool) -> dict[str, tuple]:
    """Teacher, student (teacher + dt embedding) and AR baseline with the config's shapes."""
    vocab, seq_len = (67, 16) if quick else (vocab_of(cfg), cfg.data.seq_len)
    t = QUICK if quick else cfg.teacher.model
    a = QUICK if quick else cfg.ar_baseline.model
    time_cond = t.time_cond if t.time_cond is not None else cfg.flow.source == "uniform"
    torch.manual_seed(0)
    teacher = Denoiser(
        DenoiserConfig(
            vocab, vocab - 1, seq_len, t.dim, t.n_layers, t.n_heads, t.mlp_ratio,
            time_cond=time_cond, source=cfg.flow.source, scheduler=cfg.flow.scheduler,
            exponent=cfg.flow.exponent,
        )
    )  # fmt: skip
    ar = CausalLM(
        CausalConfig(vocab, vocab - 1, seq_len, a.dim, a.n_layers, a.n_heads, a.mlp_ratio)
    )
    tok = Tokenizer.identity(vocab - 1)
    return {
        "teacher": (teacher.eval(), tok),
        "student": (build_student(teacher).eval(), tok),
        "ar": (ar.eval(), tok),
    }


def load_models(args: argparse.Namespace, cfg: ExperimentConfig) -> tuple[dict, dict]:
    """Given directories where passed (unless --random), random models for the rest."""
    models = random_models(cfg, args.quick)
    sources = dict.fromkeys(models)
    for role, kind in (("teacher", Denoiser), ("student", Denoiser), ("ar", CausalLM)):
        path = None if args.random else getattr(args, role)
        if path is None:
            continue
        model_dir = resolve_model_dir(path)
        model, tok = load_pretrained(model_dir)
        if not isinstance(model, kind) or (role == "student") != bool(
            getattr(model.config, "dt_cond", False)
        ):
            raise TsdfmError(f"--{role} {model_dir} holds a {model.model_type} of the wrong kind")
        models[role], sources[role] = (model.eval(), tok), str(model_dir)
    if args.teacher and not args.random and not args.student:  # same shapes as the real teacher
        models["student"] = (build_student(models["teacher"][0]).eval(), models["teacher"][1])
    if args.compare:
        model_dir = resolve_model_dir(args.compare)
        model, tok = load_pretrained(model_dir)
        if not getattr(model.config, "dt_cond", False):
            raise TsdfmError(f"--compare {model_dir} is not a student (no step-size embedding)")
        models["compare"], sources["compare"] = (model.eval(), tok), str(model_dir)
    return models, sources


def prepare_row(
    name, model_tok, steps, batch, cache, seq_len, args, repeats=None, precision="fp32",
    compiled=False, full_head=False,
) -> dict:  # fmt: skip
    """One row to time: its settings and ``call(n_steps, seed) -> sampler meta``.

    ``precision="bf16"`` runs the calls under bf16 autocast (the forward pass only: the jump's
    draws are float64 either way); ``compiled`` samples with ``torch.compile(model)``;
    ``full_head`` turns the sampler's head-at-jumps off (the full ``[B, L, V]`` head each step,
    as before it existed), the in-run reference for what computing it at moving positions saves.
    """
    model = model_tok[0]
    dtype = sampling_dtype(precision, "cpu")
    if compiled:
        model_tok = (maybe_compile(model, True), model_tok[1])

    def call(n_steps: int, seed: int) -> dict:
        with autocast("cpu", dtype):
            s = draw_samples(
                name, steps=n_steps, num=batch, seed=seed, batch_size=batch, cache=cache,
                seq_len=seq_len, progress=False, model_and_tokenizer=model_tok, device=None,
                head_at_jumps=False if full_head else None,
            )  # fmt: skip
        return s.meta

    return {
        "model": name, "steps": steps, "batch": batch, "cache": cache, "precision": precision,
        "compiled": compiled, "is_ar": isinstance(model, CausalLM),
        "repeats": repeats or args.repeats, "call": call, "metas": [],
    }  # fmt: skip


def measure(rows: list[dict], args) -> list[dict]:
    """Warm every row up, then time them **round-robin**: round r runs each row once with seed r.

    On a shared machine the load drifts over a run; timing one row's repeats back to back puts
    a busy minute on one row only, while rounds spread it over every row, so the in-run ratios
    the results are quoted as stay comparable. Same seeds as row-by-row timing, same samples.
    """
    for row in rows:
        for w in range(args.warmup):  # per-step work does not change with the step count
            row["call"](
                row["steps"] if row["is_ar"] else min(row["steps"], WARMUP_MAX_STEPS), 10_000 + w
            )
    for r in range(max(row["repeats"] for row in rows)):
        for row in rows:
            if r < row["repeats"]:
                row["metas"].append(row["call"](row["steps"], r))
        print(f"round {r + 1} timed", file=sys.stderr)
    return [summarise(row) for row in rows]


def summarise(row: dict) -> dict:
    """The row's median over its timed runs (the sampler's own clock), ms/sample, tokens/s, NFE."""
    metas, batch = row["metas"], row["batch"]
    secs = [m["seconds"] for m in metas]
    med = statistics.median(secs)
    return {
        "model": row["model"],
        "steps": metas[0]["steps"],
        "batch": batch,
        "precision": row["precision"],
        "compiled": row["compiled"],
        "head_at_jumps": metas[0]["sampler"].get("head_at_jumps"),
        "forward_cache": metas[0]["sampler"]["forward_cache"],
        "nfe_nominal": metas[0]["nfe_nominal"],
        "nfe_actual": statistics.mean(m["nfe_actual"] for m in metas),
        "seconds_median": med,
        "seconds_runs": secs,
        "repeats": len(secs),
        "ms_per_sample": 1000 * med / batch,
        "tokens_per_second": batch * metas[0]["seq_len"] / med,
    }


def find(rows: list[dict], model: str, batch: int, **kw) -> dict | None:
    for r in rows:
        if r["model"] == model and r["batch"] == batch and all(r[k] == v for k, v in kw.items()):
            return r
    return None


def paired_ratio(a: dict, b: dict) -> float:
    """Median over rounds of ``a``'s time / ``b``'s time in the same round (:func:`measure`
    runs every row once per round). Why beside the ratio of medians: a load spike on a shared
    machine slows both rows of its round, so each round's ratio keeps the cost while the two
    medians can come from different rounds (at batch 1 the runs spread by +-30%)."""
    return statistics.median(
        x / y for x, y in zip(a["seconds_runs"], b["seconds_runs"], strict=True)
    )


def speedups(rows: list[dict], batches: list[int], steps: int) -> dict:
    """Student @ ``steps`` against the teacher (uncached, cached) and AR, per batch size."""
    out = {}
    for b in batches:
        s = find(
            rows, "student", b, steps=steps, precision="fp32", compiled=False, head_at_jumps=True
        )
        if s is None:
            continue
        ref = {
            "teacher_uncached": find(rows, "teacher", b, forward_cache=False),
            "teacher_cached": find(rows, "teacher", b, forward_cache=True),
            "ar": find(rows, "ar", b),
        }
        out[str(b)] = {
            f"student{steps}_vs_{k}": r["seconds_median"] / s["seconds_median"]
            for k, r in ref.items()
            if r is not None
        }
        other = find(rows, "compare", b, steps=steps)
        if other is not None:  # a cost ratio: above 1 = the second student is slower
            out[str(b)][f"compare{steps}_cost_vs_student"] = (
                other["seconds_median"] / s["seconds_median"]
            )
            out[str(b)][f"compare{steps}_cost_vs_student_paired"] = paired_ratio(other, s)
            full = find(rows, "student", b, steps=steps, precision="fp32", head_at_jumps=False)
            if full is not None:
                out[str(b)][f"compare{steps}_cost_vs_student_full_head"] = (
                    other["seconds_median"] / full["seconds_median"]
                )
        variants = (("bf16", False, True), ("fp32", True, True), ("fp32", False, False))
        for p, c, at in variants:  # the speed-setting rows, if measured
            v = find(rows, "student", b, steps=steps, precision=p, compiled=c, head_at_jumps=at)
            if v is not None:
                name = "compiled" if c else p if at else "full_head"
                if not at:  # what computing the head at moving positions only gains
                    out[str(b)][f"student{steps}_head_at_jumps_vs_full_head"] = (
                        v["seconds_median"] / s["seconds_median"]
                    )
                else:
                    out[str(b)][f"student{steps}_{name}_vs_fp32"] = (
                        s["seconds_median"] / v["seconds_median"]
                    )
                if ref["ar"] is not None:
                    out[str(b)][f"student{steps}_{name}_vs_ar"] = (
                        ref["ar"]["seconds_median"] / v["seconds_median"]
                    )
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    models, sources = load_models(args, cfg)
    seq_len = args.seq_len or models["teacher"][0].config.max_len
    todo = []
    for b in args.batch_sizes:
        for steps in args.student_steps:
            todo.append(prepare_row("student", models["student"], steps, b, False, seq_len, args))
        for variant in args.variants:  # bf16 autocast / torch.compile at the headline steps
            todo.append(
                prepare_row(
                    "student", models["student"], args.headline_steps, b, False, seq_len, args,
                    precision="bf16" if variant == "bf16" else "fp32",
                    compiled=variant == "compile", full_head=variant == "full-head",
                )
            )  # fmt: skip
        if "compare" in models:  # a second student, at the headline steps
            row = prepare_row(
                "compare", models["compare"], args.headline_steps, b, False, seq_len, args
            )
            todo.append(row)
        todo.append(prepare_row("ar", models["ar"], seq_len, b, True, seq_len, args))
        if args.skip_teacher:
            continue
        teacher = models["teacher"]
        todo.append(
            prepare_row(
                "teacher", teacher, args.teacher_steps, b, False, seq_len, args,
                repeats=args.teacher_repeats,
            )
        )  # fmt: skip
        todo.append(prepare_row("teacher", teacher, args.teacher_steps, b, True, seq_len, args))
    # a time-conditioned (uniform-source) teacher cannot cache: its "cached" row is dropped
    measured = zip(measure(todo, args), todo, strict=True)
    rows = [
        r
        for r, spec in measured
        if not (spec["model"] == "teacher" and spec["cache"] and not r["forward_cache"])
    ]
    return {
        "benchmark": "speed",
        "config": args.config,
        "quick": args.quick,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seq_len": seq_len,
        "vocab_size": models["teacher"][0].config.vocab_size,
        "source": models["teacher"][0].config.source,
        "batch_sizes": args.batch_sizes,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "draw_precision": "float64",
        "cpu_has_amx": cpu_has_amx(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "models": {
            role: {
                "dir": sources[role],
                "random": sources[role] is None,
                "parameters": count_parameters(m),
            }
            for role, (m, _) in models.items()
        },
        "rows": rows,
        "speedups": speedups(rows, args.batch_sizes, args.headline_steps),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def markdown(r: dict) -> str:
    weights = "random weights" if all(m["random"] for m in r["models"].values()) else "trained"
    lines = [
        "# Sampling speed\n",
        f"{r['device']}, {r['threads']} thread(s), torch {r['torch']}; L = {r['seq_len']}, "
        f"{r['vocab_size']} ids, {r['source']} source, {weights}; median of {r['repeats']} runs "
        f"after {r['warmup']} warm-up; float64 draws{' (QUICK settings)' if r['quick'] else ''}.\n",
        f"CPU AMX: {r.get('cpu_has_amx')}; load average at the end: {r.get('load_average')}.\n",
        "| model | steps | batch | forward cache | NFE nominal | NFE actual | ms / sample | "
        "tokens / s | runs (min..max s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        cache = "kv" if x["model"] == "ar" else ("on" if x["forward_cache"] else "off")
        label = x["model"] + {"bf16": " (bf16 autocast)"}.get(x.get("precision"), "")
        label += " (torch.compile)" if x.get("compiled") else ""
        label += " (full head)" if x.get("head_at_jumps") is False else ""
        lines.append(
            f"| {label} | {x['steps']} | {x['batch']} | {cache} | {x['nfe_nominal']} | "
            f"{x['nfe_actual']:.1f} | {x['ms_per_sample']:.2f} | {x['tokens_per_second']:,.0f} | "
            f"{len(x['seconds_runs'])} ({min(x['seconds_runs']):.3g}..{max(x['seconds_runs']):.3g}) |"
        )
    lines.append("\nSpeed-up (ratio of wall-clock per batch):\n")
    for b, ratios in r["speedups"].items():
        lines.append(f"- batch {b}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", help="teacher model or run dir (default: random weights)")
    ap.add_argument("--student", help="student model or run dir (default: random weights)")
    ap.add_argument("--ar", help="AR baseline model or run dir (default: random weights)")
    ap.add_argument(
        "--compare", help="a second student (e.g. a chain student) timed beside --student"
    )
    ap.add_argument("--random", action="store_true", help="random weights even if dirs are given")
    ap.add_argument("--config", default=str(ROOT.parent / "configs" / "tiny.yaml"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes and settings (a smoke run)")
    ap.add_argument("--seq-len", type=int, default=None, help="default: the teacher's L")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 1 32")
    ap.add_argument("--student-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--headline-steps", type=int, default=8, help="student steps for speed-ups")
    ap.add_argument("--teacher-steps", type=int, default=None, help="default 1024 (quick: 64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs (default 5, quick 2)")
    ap.add_argument(
        "--teacher-repeats",
        type=int,
        default=None,
        help="timed runs of the uncached 1,024-step teacher (default: --repeats; on a CPU at "
        "batch 32 one run takes minutes, so fewer may be needed: the table shows the count)",
    )
    ap.add_argument(
        "--variants", nargs="*", default=[], choices=("bf16", "compile", "full-head"),
        help="extra student rows at --headline-steps: bf16 autocast, torch.compile, the full "
        "[B, L, V] head every step (the sampler before head-at-jumps)",
    )  # fmt: skip
    ap.add_argument("--skip-teacher", action="store_true", help="no 1,024-step teacher rows")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results"), help="output folder")
    args = ap.parse_args(argv)
    args.batch_sizes = args.batch_sizes or ([1, 4] if args.quick else [1, 32])
    args.teacher_steps = args.teacher_steps or (64 if args.quick else 1024)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.teacher_repeats = args.teacher_repeats or args.repeats
    if args.teacher_repeats < 1:
        ap.error("--teacher-repeats must be >= 1")
    if args.repeats < 5 and not args.quick:
        ap.error("--repeats must be >= 5 for a meaningful median (or use --quick)")
    if min(args.batch_sizes + args.student_steps + [args.teacher_steps, args.threads]) < 1:
        ap.error("batch sizes, steps and threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    try:
        result = run(args)
    except TsdfmError as e:
        sys.exit(f"error: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "speed-quick" if args.quick else "speed"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
