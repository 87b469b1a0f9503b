"""Does bf16 autocast move what a model samples? Same seeds, fp32 and bf16 forward passes.

Draws ``--num`` samples from one model twice with the same seed, once in fp32 and once with the
forward pass under bf16 autocast (the draws stay float64), writes both samples files, and reports
the share of identical tokens. Score both files with the same evaluator to compare gen-PPL and
entropy (the acceptance check: bf16 must not move them beyond seed-to-seed noise, so a second
fp32 seed is drawn as the noise reference):

    python benchmarks/sample_precision.py --model runs/tiny/student-blind --steps 8 --num 128
    tsdfm evaluate --samples benchmarks/results/precision/*.jsonl --data runs/tiny/data \\
        --evaluators ar-small=runs/tiny/evaluator-small --out benchmarks/results/precision/eval
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tsdfm.generation import draw_samples, write_samples
from tsdfm.generator import resolve_model_dir
from tsdfm.inference import autocast
from tsdfm.models import load_pretrained

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--num", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "precision"))
    args = ap.parse_args(argv)
    model_dir = resolve_model_dir(args.model)
    loaded = load_pretrained(model_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {"fp32": (None, args.seed), "bf16": (torch.bfloat16, args.seed),
            "fp32-seed+1": (None, args.seed + 1)}  # fmt: skip
    ids, report = {}, {"model": str(model_dir), "steps": args.steps, "num": args.num}
    for name, (dtype, seed) in runs.items():
        with autocast("cpu", dtype):
            s = draw_samples(
                model_dir, steps=args.steps, num=args.num, seed=seed, batch_size=args.batch_size,
                progress=False, model_and_tokenizer=loaded, device="cpu",
            )  # fmt: skip
        s.meta["sampler"]["forward_precision"] = "bf16-autocast" if dtype else "fp32"
        s.meta["label"] = f"student {name}"  # the evaluator's row name
        path = out / f"{name}.jsonl"
        write_samples(path, s)  # + the provenance sidecar
        ids[name] = s.ids
        report[name] = {"file": path.name, "sec_per_sample": s.meta["sec_per_sample"]}
    same = (ids["fp32"] == ids["bf16"]).float().mean().item()
    noise = (ids["fp32"] == ids["fp32-seed+1"]).float().mean().item()
    report["identical_tokens_fp32_vs_bf16"] = same
    report["identical_tokens_fp32_seed_vs_seed+1"] = noise
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
