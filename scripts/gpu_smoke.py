"""GPU smoke test at the published shape: every training stage for a few dozen steps, then
sampling, with throughput and peak memory per stage. Driven by scripts/gpu_smoke.sh.

Shape (configs/owt-170m.yaml): hidden 768, 12 blocks, 12 heads, L = 1,024 and a GPT-2-sized
vocabulary (50,259 real ids + [MASK]), so embeddings, the output head and the [B, L, V] logits
cost what they cost in the real run. The data are synthetic so that nothing is downloaded: an
affine random walk ``x[i+1] = (7919 x[i] + 17 + r) mod V`` with ``r`` uniform in {0..3}, which
gives the models something learnable; read the figures as speed and memory, not quality.

Stages, all on the shared training loop (device, bf16 autocast, pinned host->device copies,
checkpoint writes): the mask-source teacher, the energy compass (causal LM, ~0.19 of the
teacher), the teacher-sized autoregressive baseline, a blind student and a shaped student (K = 4
candidates scored by the compass). Then the student samples at 8 steps and the teacher at 1,024
steps (with and without forward caching) at L = 1,024. Each line reports tokens/s (all steps
and after the first ``--warmup`` steps, which include CUDA start-up and any compilation) and the
peak CUDA memory of that stage.

Every training row also reports its model FLOPs utilisation (MFU): the steady tokens/s times
the training FLOPs per token (6 x the per-token matmul weights, plus 12 x layers x dim x L for
attention scores and mixing, forward and backward: PaLM's count; embedding lookups are free)
over the GPU's dense bf16 peak, known for H100 and H200 (989 TFLOPS, both SXM); on any other
device the MFU is null and ``mfu_note`` says why. ``--teacher-only`` stops after the teacher
(scripts/gpu_check.sh uses it for the torch.compile run, whose compilation is per stage).

``--tiny --device cpu`` runs the same code at a toy shape on a CPU: the check that this script
works, for machines without a GPU (tests/test_distributed.py runs it).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tsdfm.config import StudentConfig, TrainConfig
from tsdfm.data.tokenizer import Tokenizer
from tsdfm.errors import TsdfmError
from tsdfm.flow import make_scheduler
from tsdfm.generation import draw_samples
from tsdfm.models import (
    CausalConfig,
    CausalLM,
    Denoiser,
    DenoiserConfig,
    build_student,
    count_parameters,
)
from tsdfm.shaping import CausalCompass, Navigator, blind_jump
from tsdfm.training.loop import Trainer
from tsdfm.training.objectives import DenoisingObjective, NextTokenObjective, ShortcutObjective

# Dense (no sparsity) bf16 tensor-core peak, FLOP/s, by a substring of the device name.
BF16_PEAK = {"H100": 989e12, "H200": 989e12}
FULL = dict(vocab=50259, seq_len=1024, dim=768, layers=12, heads=12, compass=(256, 6, 4))
TINY = dict(vocab=509, seq_len=64, dim=64, layers=2, heads=2, compass=(32, 1, 2))


def walk_corpus(n: int, length: int, vocab: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, length), dtype=np.int64)
    out[:, 0] = rng.integers(0, vocab, n)
    steps = rng.integers(0, 4, size=(n, length))
    for i in range(1, length):
        out[:, i] = (7919 * out[:, i - 1] + 17 + steps[:, i]) % vocab
    return out


def bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU (by name), else None: MFU is then not computed."""
    return next((v for k, v in BF16_PEAK.items() if k in device_name.upper()), None)


def train_flops_per_token(model: torch.nn.Module) -> float:
    """Training FLOPs per token: 6 x the weights of per-token matmuls (every nn.Linear except
    per-sequence time conditioning) + 12 x n_layers x dim x seq_len for attention (QK^T and
    AV, 2 x L x dim each per token forward, x3 with backward)."""
    per_sequence = tuple(
        name for name, m in model.named_modules() if type(m).__name__ == "ScalarEmbedding"
    )
    weights = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and "modulation" not in name
        and not name.startswith(per_sequence or ("\0",))
    )
    c = model.config
    return 6.0 * weights + 12.0 * c.n_layers * c.dim * c.max_len


class Stage:
    """Peak memory and timing of one stage; resets the CUDA peak counter on entry."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self.t0
        self.peak_gib = (
            torch.cuda.max_memory_allocated(self.device) / 2**30
            if self.device.type == "cuda"
            else float("nan")
        )


def steady_tokens_per_s(out: Path, tokens_per_step: int, warmup: int) -> float:
    """Tokens/s of compute over the logged steps after ``warmup`` (log.csv's elapsed_s)."""
    with open(out / "log.csv") as f:
        rows = [(int(r["step"]), float(r["elapsed_s"])) for r in csv.DictReader(f)]
    later = [r for r in rows if r[0] >= warmup]
    if len(later) < 2:
        return float("nan")
    (s0, e0), (s1, e1) = later[0], later[-1]
    return (s1 - s0) * tokens_per_step / max(e1 - e0, 1e-9)


def mfu_fields(model, steady_tps: float, device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = bf16_peak(name)
    fpt = train_flops_per_token(model)
    achieved = steady_tps * fpt
    return {
        "train_GFLOP_per_token": round(fpt / 1e9, 4),
        "achieved_TFLOPS": round(achieved / 1e12, 2),
        "bf16_peak_TFLOPS": None if peak is None else peak / 1e12,
        "mfu": None if peak is None or achieved != achieved else round(achieved / peak, 4),
        "mfu_note": "" if peak else f"no known bf16 peak for {name!r}: MFU not computed",
    }


def train(name, model, objective, data, cfg, root, args, device, rows, bind_ema=False):
    out = root / name
    with Stage(device) as st:
        tr = Trainer(model, objective, data[0], data[1], cfg, out, name, progress=False)
        if bind_ema:
            objective.target_model = tr.ema.module
        res = tr.fit()
    tokens = cfg.batch_size * data[0].shape[1]
    steady = steady_tokens_per_s(out, tokens, args.warmup)
    row = {
        "stage": name,
        "parameters_M": round(count_parameters(model) / 1e6, 1),
        "steps": res.steps,
        "batch": cfg.batch_size,
        "tokens_per_s": round(res.tokens_per_second),
        "tokens_per_s_after_warmup": round(steady) if steady == steady else None,
        "peak_mem_GiB": round(st.peak_gib, 2),
        "seconds": round(st.seconds, 1),
        "final_val_loss": round(res.final_val_loss, 4),
        "precision": str(tr.autocast_dtype or "fp32").replace("torch.", ""),
        "compile": cfg.compile,
    }
    if not name.startswith("student"):  # a student step also runs the teacher: no clean count
        row.update(mfu_fields(model, steady, device))
    rows.append(row)
    print(json.dumps(row), flush=True)
    shutil.rmtree(out, ignore_errors=True)  # a 170M checkpoint is ~2.6 GB: keep the disk free
    return res.model


def sample(name, model, tok, steps, args, shape, device, rows, cache=True):
    with Stage(device) as st:
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda" and torch.cuda.is_bf16_supported()
            else torch.autocast("cpu", enabled=False)
        )
        with autocast:
            s = draw_samples(
                name,
                steps=steps,
                num=args.num_samples,
                batch_size=args.num_samples,
                cache=cache,
                progress=False,
                model_and_tokenizer=(model.eval(), tok),
                seed=0,
                device=None,  # where the stage put the model (--device)
            )
    m = s.meta
    row = {
        "stage": f"sample {name}@{steps}" + ("" if cache else " (no cache)"),
        "num": m["num_samples"],
        "seq_len": shape["seq_len"],
        "seconds": round(m["seconds"], 2),
        "sec_per_sample": round(m["sec_per_sample"], 4),
        "tokens_per_s": round(m["tokens_per_second"]),
        "nfe_actual": m["nfe_actual"],
        "forward_cache": m["sampler"]["forward_cache"],
        "peak_mem_GiB": round(st.peak_gib, 2),
    }
    rows.append(row)
    print(json.dumps(row), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="toy shape (checks the script on a CPU)")
    ap.add_argument("--steps", type=int, default=30, help="teacher / causal LM steps")
    ap.add_argument("--student-steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (teacher, LMs)")
    ap.add_argument("--student-batch", type=int, default=8)
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the steady rate")
    ap.add_argument("--compile", action="store_true", help="train.compile=true for every stage")
    ap.add_argument("--teacher-only", action="store_true", help="stop after the teacher stage")
    ap.add_argument("--out", type=Path, default=Path("/tmp/tsdfm-gpu-smoke"))
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: no CUDA device visible to torch; the GPU smoke test needs one", file=sys.stderr
        )
        return 3
    shape = TINY if args.tiny else FULL
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the CPU check only; threads spin badly on a busy machine
    torch.manual_seed(0)
    v, L = shape["vocab"], shape["seq_len"]
    tok = Tokenizer.identity(v)  # ids 0..V-1 plus [MASK] = V: GPT-2's 50,257 + 3 specials
    n_train = max(4 * args.batch * args.steps, 256)
    data = (walk_corpus(n_train, L, v, 1), walk_corpus(4 * args.batch, L, v, 2))
    root = args.out
    root.mkdir(parents=True, exist_ok=True)

    def cfg(steps, batch, **kw):
        base = dict(
            steps=steps,
            batch_size=batch,
            lr=3e-4,
            warmup_steps=min(10, steps - 1),
            eval_every=steps,
            eval_batches=1,
            ckpt_every=steps,  # one checkpoint write per stage: the save path is exercised
            keep_checkpoints=1,
            log_every=1,
            ship="ema",
            device=args.device,
            compile=args.compile,
        )
        return TrainConfig(**{**base, **kw})

    rows: list[dict] = []
    t_all = time.perf_counter()
    dcfg = DenoiserConfig(
        v + 1, v, L, dim=shape["dim"], n_layers=shape["layers"], n_heads=shape["heads"]
    )
    teacher = Denoiser(dcfg)
    objective = DenoisingObjective("mask", "polynomial", 1.0, dcfg.mask_id, dcfg.num_classes)
    teacher = train(
        "teacher", teacher, objective, data, cfg(args.steps, args.batch), root, args, device, rows
    )
    if not args.teacher_only:
        more_stages(teacher, dcfg, data, cfg, root, args, device, rows, tok, shape)
    total = time.perf_counter() - t_all
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = bf16_peak(device_name)
    summary = {
        "device": device_name,
        "torch": torch.__version__,
        "shape": {k: v for k, v in shape.items()},
        "compile": args.compile,
        "bf16_peak_TFLOPS": None if peak is None else peak / 1e12,
        "total_seconds": round(total, 1),
        "rows": rows,
    }
    (root / "gpu_smoke.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"\n{'stage':<32} {'tokens/s':>12} {'steady tok/s':>13} {'MFU':>6} {'peak GiB':>9} {'s':>7}"
    )
    for r in rows:
        steady = r.get("tokens_per_s_after_warmup", "")
        mfu = r.get("mfu")
        print(
            f"{r['stage']:<32} {r['tokens_per_s']:>12,} {steady!s:>13} "
            f"{'-' if mfu is None else f'{mfu:.1%}':>6} {r['peak_mem_GiB']:>9} {r['seconds']:>7}"
        )
    print(f"total {total:.0f}s on {summary['device']}; details in {root / 'gpu_smoke.json'}")
    return 0


def more_stages(teacher, dcfg, data, cfg, root, args, device, rows, tok, shape) -> None:
    """The compass, the AR baseline, a blind and a shaped student, then sampling."""
    v = shape["vocab"]
    L = shape["seq_len"]

    cdim, clayers, cheads = shape["compass"]
    lm_shapes = {
        "compass": (cdim, clayers, cheads),
        "ar": (shape["dim"], shape["layers"], shape["heads"]),
    }
    lms = {}
    for role, (dim, layers, heads) in lm_shapes.items():
        lm = CausalLM(CausalConfig(v + 1, v, L, dim=dim, n_layers=layers, n_heads=heads))
        lms[role] = train(
            role,
            lm,
            NextTokenObjective(),
            data,
            cfg(args.steps, args.batch, lr=6e-4),
            root,
            args,
            device,
            rows,
        )

    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    compass = lms["compass"].eval()
    scfg = StudentConfig(teacher_steps=1024)
    sched = make_scheduler("polynomial", 1.0)
    students = {}
    for label in ("blind", "shaped"):
        jump_fn = None
        if label == "shaped":
            nav = Navigator(CausalCompass(compass), 4, "argmin", 1.0, "mask", dcfg.mask_id)
            jump_fn = nav.navigated_jump(blind_jump(sched, "mask", dcfg.mask_id))
        torch.manual_seed(0)
        student = build_student(teacher, "in-memory teacher")
        obj = ShortcutObjective(
            teacher, scfg, dcfg.mask_id, dcfg.num_classes, jump_fn, stats_every=1
        )
        students[label] = train(
            f"student-{label}",
            student,
            obj,
            data,
            cfg(args.student_steps, args.student_batch, lr=1e-5),
            root,
            args,
            device,
            rows,
            bind_ema=True,
        )

    sample("student-shaped", students["shaped"], tok, 8, args, shape, device, rows)
    sample("teacher", teacher, tok, 1024, args, shape, device, rows)
    sample("teacher", teacher, tok, 1024, args, shape, device, rows, cache=False)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TsdfmError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
