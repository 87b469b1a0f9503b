"""Stage: train a causal LM in one of four roles on the shared loop.

Roles and their config sections:

* ``compass`` (``cfg.compass``): the energy compass of trajectory shaping. Its energy is the mean
  per-token NLL ``E(x) = -(1/L) sum_i log p(x_i | x_<i)``; it must stay *lightweight*, at most a
  quarter of the teacher's parameters (DESIGN.md section 4), or shaping stops being cheap.
* ``evaluator-small`` / ``evaluator-large`` (``cfg.evaluator_small`` / ``cfg.evaluator_large``):
  the project's own gen-PPL judges; different seeds and sizes from the compass, so a student
  shaped by the compass is not graded by the same model.
* ``ar`` (``cfg.ar_baseline``): the autoregressive baseline of the teacher's size.

All are trained with next-token cross-entropy on the *train* split only (validation on ``valid``);
the test split is held out for the reported real-text rows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tsdfm import distributed
from tsdfm.config import CausalStageConfig, ExperimentConfig
from tsdfm.data import load_prepared
from tsdfm.errors import TsdfmError
from tsdfm.models import CausalConfig, CausalLM, count_parameters, load_pretrained
from tsdfm.training.loop import Trainer
from tsdfm.training.objectives import NextTokenObjective
from tsdfm.training.stage_checks import checked_recorder
from tsdfm.training.summary import write_summary
from tsdfm.training.teacher import prepare_run_dir, world_note

ROLES = {
    "compass": "compass",
    "evaluator-small": "evaluator_small",
    "evaluator-large": "evaluator_large",
    "ar": "ar_baseline",
}
COMPASS_MAX_FRACTION = 0.25


def stage_config(cfg: ExperimentConfig, role: str) -> CausalStageConfig:
    if role not in ROLES:
        raise TsdfmError(f"unknown causal role {role!r}; choose one of {', '.join(ROLES)}")
    return getattr(cfg, ROLES[role])


def causal_model_config(cfg: ExperimentConfig, role: str, tokenizer, seq_len: int) -> CausalConfig:
    """Shape from the role's section; vocabulary and fingerprint from the data's tokenizer.

    The LM predicts every id but ``[MASK]`` (``num_classes``), so document-separating ``[EOS]``
    tokens, which occur in the packed blocks, are predicted like any other token; ``[MASK]`` is
    its begin-of-sequence input.
    """
    m = stage_config(cfg, role).model
    return CausalConfig(
        vocab_size=tokenizer.vocab_size,
        num_classes=tokenizer.num_classes,
        max_len=seq_len,
        dim=m.dim,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        mlp_ratio=m.mlp_ratio,
        dropout=m.dropout,
        tokenizer_fingerprint=tokenizer.fingerprint(),
        extra={"config_name": cfg.name, "role": role},
    )


def teacher_parameters(teacher_dir: Path) -> int:
    """Parameter count of a teacher given its run directory or its ``model`` directory."""
    teacher_dir = Path(teacher_dir)
    model_dir = teacher_dir / "model" if (teacher_dir / "model").is_dir() else teacher_dir
    model, _ = load_pretrained(model_dir, verify=False)
    return count_parameters(model)


def check_compass_size(n_params: int, teacher_dir: Path | None) -> float | None:
    """Ratio compass / teacher parameters; prints a warning above ``COMPASS_MAX_FRACTION``."""
    if teacher_dir is None:
        return None
    n_teacher = teacher_parameters(teacher_dir)
    ratio = n_params / n_teacher
    if ratio > COMPASS_MAX_FRACTION:
        print(
            f"warning: the compass has {n_params:,} parameters, {ratio:.2f} of the teacher's "
            f"{n_teacher:,} (limit {COMPASS_MAX_FRACTION}); shrink compass.model so shaping stays "
            "cheap"
        )
    return ratio


def train_causal(
    cfg: ExperimentConfig,
    role: str,
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    teacher_dir: Path | None = None,
) -> Path:
    """Train the causal LM for ``role``; returns ``out_dir/model`` (saved with its tokenizer)."""
    stage = stage_config(cfg, role)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    tcfg = stage.train
    ctx = distributed.setup(tcfg.device)
    data = load_prepared(data_dir, verify=True)
    prepare_run_dir(out_dir, resume)
    section = ROLES[role]
    record = checked_recorder(
        cfg, data, data_dir, out_dir, resume, ("data", section), f"{section}.train"
    )
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    torch.manual_seed(tcfg.seed)
    mcfg = causal_model_config(cfg, role, data.tokenizer, data.seq_len)
    model = CausalLM(mcfg)
    n_params = count_parameters(model)
    ratio = check_compass_size(n_params, teacher_dir) if role == "compass" else None
    prepare_run_dir(out_dir, resume, model)
    if ctx.is_main:
        print(
            f"[{role}] {n_params / 1e6:.2f}M parameters, L={data.seq_len}, "
            f"{len(data.split('train'))} training blocks, seed {tcfg.seed}" + world_note(ctx)
        )
    trainer = Trainer(
        model,
        NextTokenObjective(),
        data.split("train"),
        data.split("valid"),
        tcfg,
        out_dir,
        role,
        progress=progress,
        on_start=record,
        config_key=f"{section}.train",
    )
    result = trainer.fit(resume=resume)
    if result.interrupted:
        raise SystemExit(130)
    model_dir = out_dir / "model"
    if ctx.is_main:
        model_dir = result.model.save_pretrained(model_dir, tokenizer=data.tokenizer)
        extra = {"role": role}
        if ratio is not None:
            extra["teacher_parameter_ratio"] = round(ratio, 4)
        if ctx.enabled:
            extra["world_size"] = ctx.world_size
        write_summary(out_dir, role, result, n_params, data_dir, mcfg, **extra)
        print(
            f"[{role}] done: val_loss {result.final_val_loss:.4f} in {result.seconds:.0f}s -> "
            f"{model_dir}"
        )
    distributed.barrier()  # the other ranks return once the model is on disk
    return model_dir
