"""The one training loop every stage shares (teacher, compass, evaluators, students).

Responsibilities: AdamW with linear warm-up then cosine decay (torch LR schedulers), gradient
clipping, an EMA copy (``torch.optim.swa_utils``), periodic validation, CSV logs and a progress
bar, atomic checkpoints, exact resume, graceful stop on SIGINT/SIGTERM, and skipping of
non-finite steps. A stage supplies only an objective and its data.

Exact resume rests on three facts: the batch for step s is a pure function of (seed, s); all noise
comes from one ``torch.Generator`` whose state is checkpointed; model, EMA, optimiser and
scheduler states are checkpointed together.
"""

from __future__ import annotations

import csv
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from tsdfm.config import TrainConfig
from tsdfm.errors import TsdfmError
from tsdfm.training.checkpoint import CheckpointManager
from tsdfm.training.objectives import Objective


class BatchStream:
    """Deterministic batches: epoch e is a permutation drawn from ``seed + e``; step s takes the
    s-th slice of the concatenated epochs. Resuming at step s needs nothing but s."""

    def __init__(self, data, batch_size: int, seed: int):
        if len(data) == 0:
            raise TsdfmError("the training split is empty: prepare more data or a smaller seq_len")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self._perm_epoch, self._perm = -1, None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng(self.seed + epoch).permutation(len(self.data))
            self._perm_epoch = epoch
        return self._perm

    def batch(self, step: int) -> torch.Tensor:
        n = len(self.data)
        start = step * self.batch_size
        idx = []
        while len(idx) < self.batch_size:
            epoch, offset = divmod(start + len(idx), n)
            take = min(self.batch_size - len(idx), n - offset)
            idx.extend(self._perm_for(epoch)[offset : offset + take].tolist())
        rows = self.data[np.asarray(idx)]
        return torch.as_tensor(np.asarray(rows, dtype=np.int64))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases and embeddings-as-vectors (1-D params)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    """Linear warm-up to ``lr`` then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    warm = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    cosine = CosineAnnealingLR(
        opt, T_max=max(cfg.steps - warm, 1), eta_min=cfg.lr * cfg.min_lr_ratio
    )
    if warm == 0:
        return SequentialLR(opt, [LambdaLR(opt, lambda _: 1.0), cosine], milestones=[0])
    return SequentialLR(
        opt, [LinearLR(opt, 1e-3, 1.0, total_iters=warm), cosine], milestones=[warm]
    )


@dataclass
class FitResult:
    model: nn.Module  # what gets shipped: the EMA or the raw weights (see ``shipped``)
    raw_model: nn.Module
    steps: int
    final_val_loss: float | None  # of the shipped weights
    seconds: float
    tokens_per_second: float
    bad_steps: int
    interrupted: bool
    shipped: str = "ema"
    val_losses: dict[str, float] | None = None  # {"ema": ..., "raw": ...} when both were measured


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked at step boundaries."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        train_data,
        valid_data,
        cfg: TrainConfig,
        out_dir: Path,
        stage: str = "train",
        on_eval: Callable[[nn.Module, int], dict[str, float]] | None = None,
        progress: bool = True,
        extra_state: Callable[[], dict] | None = None,
    ):
        self.model, self.objective, self.cfg = model, objective, cfg
        self.out_dir, self.stage, self.on_eval, self.progress = (
            Path(out_dir),
            stage,
            on_eval,
            progress,
        )
        self.train = BatchStream(train_data, cfg.batch_size, cfg.seed)
        self.valid = valid_data
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", cfg.keep_checkpoints)
        self.opt = make_optimizer(model, cfg)
        self.sched = make_scheduler(self.opt, cfg)
        self.ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.bad_steps = 0
        self.elapsed = 0.0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "bad_steps": self.bad_steps,
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.step, self.bad_steps, self.elapsed = (
            state["step"],
            state["bad_steps"],
            state["elapsed"],
        )

    def save_checkpoint(self) -> Path:
        return self.ckpt.save(self.state_dict(), self.step)

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def validate(self, model: nn.Module | None = None) -> float:
        """Mean objective over fixed validation batches with a fixed noise seed (comparable)."""
        model = model if model is not None else self.ema.module
        was = model.training
        model.eval()
        gen = torch.Generator().manual_seed(self.cfg.seed + 1_000_003)
        stream = BatchStream(self.valid, self.cfg.batch_size, 0)
        n_batches = min(
            self.cfg.eval_batches, max(1, math.ceil(len(self.valid) / self.cfg.batch_size))
        )
        losses = [float(self.objective(model, stream.batch(i), gen)[0]) for i in range(n_batches)]
        model.train(was)
        return float(np.mean(losses))

    # ------------------------------------------------------------------ logs
    def _log(self, name: str, row: dict[str, Any]) -> None:
        path = self.out_dir / name
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def _truncate_logs(self) -> None:
        """After a resume, drop log rows past the checkpoint so the CSV has no duplicate steps."""
        for name in ("log.csv", "eval.csv"):
            path = self.out_dir / name
            if not path.exists():
                continue
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            keep = [r for r in rows if int(r["step"]) <= self.step]
            if len(keep) != len(rows) and rows:
                with open(path, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(keep)

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool = False) -> FitResult:
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.ckpt.has_checkpoint():
            state, step = self.ckpt.load_latest()
            self.load_state_dict(state)
            print(f"[{self.stage}] resumed from step {step} ({self.ckpt.directory})")
            self._truncate_logs()
        elif not resume:
            for name in ("log.csv", "eval.csv"):
                (self.out_dir / name).unlink(missing_ok=True)
        tb = _tensorboard(self.out_dir) if cfg.tensorboard else None
        self.model.train()
        consecutive_bad, interrupted = 0, False
        tokens_per_step = cfg.batch_size * self.train.data[0].shape[-1]
        val_loss = None
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=self.stage,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        t_window, tokens_window = time.perf_counter(), 0
        with _StopFlag() as stop:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                x1 = self.train.batch(self.step)
                loss, metrics = self.objective(self.model, x1, self.generator)
                self.opt.zero_grad(set_to_none=True)
                ok = bool(torch.isfinite(loss))
                grad_norm = float("nan")
                if ok:
                    loss.backward()
                    grad_norm = float(
                        torch.nn.utils.clip_grad_norm_(
                            self.model.parameters(),
                            cfg.grad_clip if cfg.grad_clip > 0 else float("inf"),
                        )
                    )
                    ok = math.isfinite(grad_norm)
                if ok:
                    self.opt.step()
                    self.ema.update_parameters(self.model)
                    consecutive_bad = 0
                else:
                    self.opt.zero_grad(set_to_none=True)
                    self.bad_steps += 1
                    consecutive_bad += 1
                    print(
                        f"[{self.stage}] step {self.step}: non-finite loss/gradient, step skipped"
                    )
                    if consecutive_bad >= cfg.max_bad_steps:
                        raise TsdfmError(
                            f"{consecutive_bad} consecutive non-finite steps at step {self.step}: "
                            "training stopped; the last good checkpoint is intact. Lower the "
                            "learning rate or check the data, then --resume"
                        )
                self.sched.step()
                self.step += 1
                self.elapsed += time.perf_counter() - t0
                tokens_window += tokens_per_step
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    tps = tokens_window / max(now - t_window, 1e-9)
                    t_window, tokens_window = now, 0
                    row = {
                        "step": self.step,
                        "loss": round(loss.item(), 6),
                        "lr": self.sched.get_last_lr()[0],
                        "grad_norm": round(grad_norm, 4),
                        "tokens_per_s": round(tps, 1),
                        "elapsed_s": round(self.elapsed, 2),
                        **{k: round(float(v), 6) for k, v in metrics.items()},
                    }
                    self._log("log.csv", row)
                    if tb is not None:
                        for k, v in row.items():
                            if k != "step":
                                tb.add_scalar(f"train/{k}", v, self.step)
                    bar.set_postfix(loss=f"{loss.item():.4f}", tok_s=f"{tps:,.0f}", refresh=False)
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    val_loss = self.validate()
                    extra = self.on_eval(self.ema.module, self.step) if self.on_eval else {}
                    self._log(
                        "eval.csv", {"step": self.step, "val_loss": round(val_loss, 6), **extra}
                    )
                    if tb is not None:
                        tb.add_scalar("valid/loss", val_loss, self.step)
                    bar.write(f"[{self.stage}] step {self.step}: val_loss {val_loss:.4f}")
                bar.update(1)
                # Not inside a run of non-finite steps: if it ends in a stop, the newest
                # checkpoint must be the last good one, not a copy of the trouble.
                due = self.step % cfg.ckpt_every == 0 or self.step == cfg.steps
                if due and consecutive_bad == 0:
                    self.save_checkpoint()
                over_budget = cfg.max_minutes > 0 and self.elapsed > 60 * cfg.max_minutes
                if over_budget and self.step < cfg.steps:
                    val_loss = self.validate()
                    self._log("eval.csv", {"step": self.step, "val_loss": round(val_loss, 6)})
                    self.save_checkpoint()
                    bar.write(
                        f"[{self.stage}] time budget of {cfg.max_minutes} min reached at step "
                        f"{self.step}/{cfg.steps}; finishing early (val_loss {val_loss:.4f})"
                    )
                    break
                if stop.signum is not None and self.step < cfg.steps:
                    self.save_checkpoint()
                    interrupted = True
                    bar.write(
                        f"[{self.stage}] stopped by signal {stop.signum} at step {self.step}; "
                        "checkpoint saved. Re-run the same command with --resume to continue."
                    )
                    break
        bar.close()
        if tb is not None:
            tb.close()
        shipped, val_losses = "ema", None
        if not interrupted and cfg.ship != "ema":
            # An EMA lags a model that is still improving: in a short run it averages over weights
            # from the high-learning-rate phase. Keep whichever validates better (``ship: auto``).
            ema_loss = val_loss if val_loss is not None else self.validate()
            raw_loss = self.validate(self.model)
            val_losses = {"ema": ema_loss, "raw": raw_loss}
            if cfg.ship == "raw" or raw_loss < ema_loss:
                shipped, val_loss = "raw", raw_loss
            print(
                f"[{self.stage}] validation: EMA {ema_loss:.4f}, raw {raw_loss:.4f} -> shipping {shipped}"
            )
        return FitResult(
            model=self.ema.module if shipped == "ema" else self.model,
            raw_model=self.model,
            steps=self.step,
            final_val_loss=val_loss,
            seconds=self.elapsed,
            tokens_per_second=self.step * tokens_per_step / max(self.elapsed, 1e-9),
            bad_steps=self.bad_steps,
            interrupted=interrupted,
            shipped=shipped,
            val_losses=val_losses,
        )


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TsdfmError(
            "train.tensorboard=true needs the tensorboard package: pip install tensorboard"
        ) from e
    return SummaryWriter(str(out_dir / "tensorboard"))
