"""Stage: train the DFM teacher on prepared data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from tsdfm import distributed
from tsdfm.artifacts import ensure_writable
from tsdfm.config import ExperimentConfig
from tsdfm.data import load_prepared
from tsdfm.errors import TsdfmError
from tsdfm.models import Denoiser, DenoiserConfig, count_parameters
from tsdfm.training.checkpoint import check_disk_space, estimate_checkpoint_bytes
from tsdfm.training.loop import Trainer
from tsdfm.training.objectives import DenoisingObjective
from tsdfm.training.stage_checks import checked_recorder
from tsdfm.training.summary import write_summary


def teacher_model_config(cfg: ExperimentConfig, tokenizer, seq_len: int) -> DenoiserConfig:
    m = cfg.teacher.model
    time_cond = m.time_cond if m.time_cond is not None else cfg.flow.source == "uniform"
    return DenoiserConfig(
        vocab_size=tokenizer.vocab_size,
        num_classes=tokenizer.num_classes,
        max_len=seq_len,
        dim=m.dim,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        mlp_ratio=m.mlp_ratio,
        dropout=m.dropout,
        time_cond=time_cond,
        source=cfg.flow.source,
        scheduler=cfg.flow.scheduler,
        exponent=cfg.flow.exponent,
        tokenizer_fingerprint=tokenizer.fingerprint(),
        extra={"config_name": cfg.name},
    )


def prepare_run_dir(out_dir: Path, resume: bool, model: torch.nn.Module | None = None) -> None:
    """Checks that must pass before a stage creates anything in ``out_dir``.

    Refuses to overwrite an earlier run unless asked to resume it (nothing is ever lost), and,
    given the ``model`` to be trained, refuses to start when the disk cannot hold its
    checkpoints: failing at the first checkpoint would waste the work and leave a partial run.
    """
    ensure_writable(out_dir)
    ckpts = out_dir / "checkpoints"
    if not resume and (ckpts.exists() or (out_dir / "model").exists()):
        raise TsdfmError(
            f"{out_dir} already holds a training run; pass --resume to continue it, or choose "
            "another --out"
        )
    if model is not None:
        check_disk_space(ckpts, estimate_checkpoint_bytes(model))


def train_teacher(
    cfg: ExperimentConfig,
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    tcfg = cfg.teacher.train
    ctx = distributed.setup(tcfg.device)
    data = load_prepared(data_dir, verify=True)
    prepare_run_dir(out_dir, resume)
    record = checked_recorder(
        cfg, data, data_dir, out_dir, resume, ("data", "flow", "teacher"), "teacher.train"
    )
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    torch.manual_seed(tcfg.seed)
    mcfg = teacher_model_config(cfg, data.tokenizer, data.seq_len)
    model = Denoiser(mcfg)
    if cfg.teacher.init_from:
        warm_start(model, Path(cfg.teacher.init_from), verbose=ctx.is_main)
    prepare_run_dir(out_dir, resume, model)
    objective = DenoisingObjective(
        cfg.flow.source,
        cfg.flow.scheduler,
        cfg.flow.exponent,
        mcfg.mask_id,
        mcfg.num_classes,
        tcfg.loss,
    )
    n_params = count_parameters(model)
    if ctx.is_main:
        print(
            f"[teacher] {n_params / 1e6:.2f}M parameters, source={cfg.flow.source}, "
            f"time_cond={mcfg.time_cond}, L={data.seq_len}, {len(data.split('train'))} training "
            "blocks" + world_note(ctx)
        )
    trainer = Trainer(
        model,
        objective,
        data.split("train"),
        data.split("valid"),
        tcfg,
        out_dir,
        "teacher",
        progress=progress,
        on_start=record,
        config_key="teacher.train",
    )
    result = trainer.fit(resume=resume)
    if result.interrupted:
        raise SystemExit(130)
    model_dir = out_dir / "model"
    if ctx.is_main:
        model_dir = result.model.save_pretrained(model_dir, tokenizer=data.tokenizer)
        extra = {"world_size": ctx.world_size} if ctx.enabled else {}
        if cfg.teacher.init_from:
            extra["init_from"] = str(cfg.teacher.init_from)
        write_summary(out_dir, "teacher", result, n_params, data_dir, mcfg, **extra)
        print(
            f"[teacher] done: val_loss {result.final_val_loss:.4f} in {result.seconds:.0f}s -> "
            f"{model_dir}"
        )
    distributed.barrier()  # the other ranks return once the model is on disk
    return model_dir


def warm_start(model: Denoiser, source: Path, verbose: bool = True) -> None:
    """Copy a pretrained teacher's weights into ``model`` (``teacher.init_from``).

    Checked field by field before anything is written: every architecture, flow and tokenizer
    field must agree (only the free-form ``extra`` may differ), so a warm start can never
    silently train a model on another tokenizer or another source. A resumed run then loads
    its own checkpoint over these weights, so ``--resume`` still continues exactly.
    """
    init = Denoiser.from_pretrained(source)  # clear errors for a missing or corrupt directory
    mine, theirs = dataclasses.asdict(model.config), dataclasses.asdict(init.config)
    differ = sorted(k for k in mine if k != "extra" and mine[k] != theirs.get(k))
    if differ:
        detail = ", ".join(f"{k}: {theirs.get(k)!r} there, {mine[k]!r} here" for k in differ)
        raise TsdfmError(
            f"teacher.init_from={source} does not match this run's teacher ({detail}); warm "
            "starts need the same architecture, flow and tokenizer"
        )
    model.load_state_dict(init.state_dict())
    if verbose:
        print(f"[teacher] warm start from {source}")


def world_note(ctx) -> str:
    """`` on N processes (device)`` under torchrun; nothing in one process (logs unchanged)."""
    return f" on {ctx.world_size} processes ({ctx.device.type})" if ctx.enabled else ""
