"""Command-line interface: ``tsdfm <command>``. Input errors exit with code 2 and one message."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tsdfm import __version__
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

    smp = sub.add_parser("sample", help="draw samples from a model directory")
    smp.add_argument(
        "--model", required=True, help="model directory (e.g. runs/tiny/teacher/model)"
    )
    smp.add_argument("--steps", type=int, default=1024)
    smp.add_argument("--num", type=int, default=8)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--batch-size", type=int, default=64)
    smp.add_argument("--top-k", type=int, default=None)
    smp.add_argument("--top-p", type=float, default=None)
    smp.add_argument("--no-cache", action="store_true", help="disable forward caching")
    smp.add_argument("--out", help="samples.jsonl to write (default: next to the model)")
    smp.add_argument("--show", type=int, default=8, help="how many samples to print")

    ev = sub.add_parser("evaluate", help="evaluate samples files")
    ev.add_argument("--samples", nargs="+", required=True)
    ev.add_argument("--data", required=True, help="prepared data dir (markov: exact truth metrics)")
    ev.add_argument("--out", help="write the metrics as JSON here")

    pipe = sub.add_parser("pipeline", help="run every stage in order (the main job)")
    _add_config(pipe)
    pipe.add_argument("--run-dir", help="run directory (default runs/<config name>)")
    return ap


def _cfg(args):
    from tsdfm.config import load_config

    return load_config(args.config, args.overrides)


def _run(args) -> int:
    if args.command == "data":
        from tsdfm.data import prepare_data

        cfg = _cfg(args)
        out = Path(args.out or f"runs/{cfg.name}/data")
        d = prepare_data(cfg.data, out, progress=not args.no_progress)
        print(json.dumps(d.manifest.get("counts", {}), indent=1))
        print(f"data ready in {out}")
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
        from tsdfm.generation import draw_samples, write_samples

        s = draw_samples(
            args.model,
            steps=args.steps,
            num=args.num,
            seed=args.seed,
            batch_size=args.batch_size,
            cache=not args.no_cache,
            top_k=args.top_k,
            top_p=args.top_p,
        )
        out = Path(
            args.out
            or Path(args.model).parent / "samples" / f"steps{args.steps}_seed{args.seed}.jsonl"
        )
        write_samples(out, s)
        for text in s.texts[: args.show]:
            print("-", text)
        m = s.meta
        print(
            f"{m['num_samples']} samples, {m['steps']} steps: nfe nominal {m['nfe_nominal']}, actual "
            f"{m['nfe_actual']:.0f}; {m['sec_per_sample'] * 1000:.1f} ms/sample -> {out}"
        )
    elif args.command == "evaluate":
        from tsdfm.data import load_prepared
        from tsdfm.evaluation import truth_metrics
        from tsdfm.generation import read_samples

        chain = load_prepared(Path(args.data)).chain()
        if chain is None:
            raise TsdfmError("only the markov corpus has exact truth metrics so far")
        out = {}
        for f in args.samples:
            ids, _, meta = read_samples(f)
            out[f] = {"steps": meta.get("steps"), **truth_metrics(chain, ids)}
            r = out[f]
            print(
                f"{f}: truth-NLL {r['truth_nll']:.4f} (expected {r['expected_nll']:.4f}, H "
                f"{r['entropy_rate']:.4f}), entropy {r['entropy']:.3f} (data {r['entropy_data']:.3f}), "
                + ", ".join(
                    f"{k}-gram TV {v:.4f} (floor {r['ngram_tv_floor'][k]:.4f})"
                    for k, v in r["ngram_tv"].items()
                )
            )
        if args.out:
            from tsdfm.artifacts import atomic_write_json

            atomic_write_json(Path(args.out), out)
    elif args.command == "pipeline":
        from tsdfm.pipeline import run_pipeline

        cfg = _cfg(args)
        run_pipeline(cfg, Path(args.run_dir or f"runs/{cfg.name}"), progress=not args.no_progress)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except TsdfmError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
