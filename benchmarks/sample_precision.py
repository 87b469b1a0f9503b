"""Does bf16 autocast (or the head at switching positions) move what a model samples?

Draws ``--num`` samples from one model twice with the same seed, once in fp32 and once with the
forward pass under bf16 autocast (the draws stay float64), writes both samples files, and reports
the share of identical tokens. Score both files with the same evaluator to compare gen-PPL and
entropy (the acceptance check: bf16 must not move them beyond seed-to-seed noise, so a second
fp32 seed is drawn as the noise reference):

    python benchmarks/sample_precision.py --model runs/tiny/student-blind --steps 8 --num 128

``--compare full-head`` instead draws the same seed with the sampler's default (the last block
and the head at the switching positions only) and with the full ``[B, L, V]`` head every step
(``head_at_jumps=False``); both draw the same random numbers, so their samples should agree
token for token up to float rounding (files ``at-jumps``, ``full-head``, ``at-jumps-seed+1``).
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
    ap.add_argument("--compare", choices=("bf16", "full-head"), default="bf16")
    args = ap.parse_args(argv)
    model_dir = resolve_model_dir(args.model)
    loaded = load_pretrained(model_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare == "bf16":  # name: (autocast dtype, seed, head at switching positions)
        runs = {"fp32": (None, args.seed, None), "bf16": (torch.bfloat16, args.seed, None),
                "fp32-seed+1": (None, args.seed + 1, None)}  # fmt: skip
    else:
        runs = {"at-jumps": (None, args.seed, True), "full-head": (None, args.seed, False),
                "at-jumps-seed+1": (None, args.seed + 1, True)}  # fmt: skip
    ids, report = {}, {"model": str(model_dir), "steps": args.steps, "num": args.num}
    for name, (dtype, seed, at_jumps) in runs.items():
        with autocast("cpu", dtype):
            s = draw_samples(
                model_dir, steps=args.steps, num=args.num, seed=seed, batch_size=args.batch_size,
                progress=False, model_and_tokenizer=loaded, device="cpu", head_at_jumps=at_jumps,
            )  # fmt: skip
        s.meta["sampler"]["forward_precision"] = "bf16-autocast" if dtype else "fp32"
        s.meta["label"] = f"student {name}"  # the evaluator's row name
        path = out / f"{name}.jsonl"
        write_samples(path, s)  # + the provenance sidecar
        ids[name] = s.ids
        report[name] = {"file": path.name, "sec_per_sample": s.meta["sec_per_sample"]}
    base, other, reseed = runs
    same = (ids[base] == ids[other]).float().mean().item()
    noise = (ids[base] == ids[reseed]).float().mean().item()
    report[f"identical_tokens_{base}_vs_{other}"] = same
    report[f"identical_tokens_{base}_seed_vs_seed+1"] = noise
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
