"""The main job: every stage in order into one run directory, skipping finished stages.

For now: data -> teacher -> samples (teacher at ``sample.steps`` and at 8 steps) -> a short
printout, plus exact truth metrics on the ``markov`` corpus. Later stages (compass, evaluators,
students, report) slot in as further steps of :func:`run_pipeline`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tsdfm.artifacts import atomic_write_json, read_json
from tsdfm.config import ExperimentConfig, save_config
from tsdfm.data import load_prepared, prepare_data
from tsdfm.generation import draw_samples, write_samples
from tsdfm.training.teacher import train_teacher


def _stage_done(directory: Path) -> bool:
    summary = directory / "summary.json"
    return summary.is_file() and read_json(summary).get("complete", False)


def run_pipeline(
    cfg: ExperimentConfig, run_dir: Path, progress: bool = True, show: int = 5
) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    print(f"== data -> {run_dir / 'data'}")
    data = prepare_data(cfg.data, run_dir / "data", progress=progress)

    teacher_dir = run_dir / "teacher"
    if _stage_done(teacher_dir):
        print(f"== teacher: complete, skipping ({teacher_dir})")
    else:
        resume = (teacher_dir / "checkpoints").exists()
        print(f"== teacher -> {teacher_dir}" + (" (resuming)" if resume else ""))
        train_teacher(cfg, run_dir / "data", teacher_dir, resume=resume, progress=progress)

    results = {}
    chain = load_prepared(run_dir / "data").chain()
    for steps in sorted({cfg.sample.steps, 8}, reverse=True):
        path = run_dir / "samples" / f"teacher_{steps}.jsonl"
        s = draw_samples(
            teacher_dir / "model",
            steps=steps,
            num=cfg.sample.num,
            seed=cfg.sample.seed,
            batch_size=cfg.sample.batch_size,
            cache=cfg.sample.cache,
            top_k=cfg.sample.top_k,
            top_p=cfg.sample.top_p,
            progress=progress,
        )
        write_samples(path, s)
        row = {
            k: s.meta[k]
            for k in ("steps", "num_samples", "nfe_nominal", "nfe_actual", "sec_per_sample")
        }
        if chain is not None:
            from tsdfm.evaluation import truth_metrics

            row["truth"] = truth_metrics(chain, s.ids)
        results[f"teacher@{steps}"] = row
        print(
            f"\n== teacher @ {steps} steps ({s.meta['nfe_actual']:.0f} actual forward passes, "
            f"{s.meta['sec_per_sample'] * 1000:.1f} ms/sample)"
        )
        for text in s.texts[:show]:
            print("  -", text[:300].replace("\n", " "))
    atomic_write_json(run_dir / "pipeline.json", results)
    print("\n" + json.dumps(results, indent=1)[:4000])
    _ = data
    return results
