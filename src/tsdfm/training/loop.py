"""The one training loop every stage shares (teacher, compass, evaluators, students).

Responsibilities: AdamW with linear warm-up then cosine decay (torch LR schedulers), gradient
clipping, an EMA copy (``torch.optim.swa_utils``), periodic validation, CSV logs and a progress
bar, atomic checkpoints, exact resume, graceful stop on SIGINT/SIGTERM/SIGHUP, and skipping of
non-finite steps. A stage supplies only an objective and its data.

Exact resume rests on three facts: the batch for step s is a pure function of (seed, s); all noise
comes from ``torch.Generator`` objects whose states are checkpointed; model, EMA, optimiser and
scheduler states are checkpointed together.

Scale-out (torchrun, DDP; docs/scale-out.md). ``batch_size`` is the global batch of a step. It
is cut into ``S = world_size x grad_accum_steps`` equal, contiguous *shards*; shard j is the
j-th micro-batch of rank ``j // grad_accum_steps`` and draws its noise from its own generator,
seeded from ``(seed, j)`` (shard 0 from ``seed`` itself, which keeps a one-process run exactly
what it was before scale-out existed). So a run is defined by S, not by how S is split into
processes: 2 processes x 1 micro-batch and 1 process x 2 micro-batches see the same rows with
the same noise and differ only in floating-point summation order, which is what the
distributed tests compare, and what makes a resume with another world size (same S) sound.
``BatchStream`` is the distributed sampler: every rank derives the step's global batch from
``(seed, epoch)`` and keeps its own shards, so there is no sampler state to synchronise.
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tsdfm import distributed
from tsdfm.artifacts import run_lock
from tsdfm.config import TrainConfig
from tsdfm.distributed import derive_seed, make_generator
from tsdfm.errors import TsdfmError
from tsdfm.training.checkpoint import CheckpointManager
from tsdfm.training.logs import TrainLog, remove_logs, truncate_logs
from tsdfm.training.objectives import Objective

# Validation noise comes from its own generator, seeded cfg.seed + this: the same batches and
# noise at every evaluation, apart from the training stream (studies/split_gap.py reuses it).
VALIDATION_SEED_OFFSET = 1_000_003


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

    def indices(self, step: int) -> np.ndarray:
        """Row indices of the global batch of ``step``."""
        n = len(self.data)
        start = step * self.batch_size
        idx = []
        while len(idx) < self.batch_size:
            epoch, offset = divmod(start + len(idx), n)
            take = min(self.batch_size - len(idx), n - offset)
            idx.extend(self._perm_for(epoch)[offset : offset + take].tolist())
        return np.asarray(idx)

    def batch(self, step: int) -> torch.Tensor:
        """The global batch of ``step`` as an int64 tensor ``[batch_size, L]``."""
        return self._rows(self.indices(step))

    def shard(self, step: int, lo: int, hi: int) -> torch.Tensor:
        """Rows ``lo:hi`` of the global batch of ``step`` (a rank's micro-batch); only those
        rows are read from disk."""
        return self._rows(self.indices(step)[lo:hi])

    def _rows(self, idx: np.ndarray) -> torch.Tensor:
        rows = self.data[idx]
        return torch.as_tensor(np.asarray(rows, dtype=np.int64))


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, lr_scales: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases and embeddings-as-vectors (1-D params).

    ``lr_scales`` maps a parameter-name prefix (``"chain."``) to a multiplier of ``lr`` for
    the parameters under it (their own groups, same warm-up and cosine; the cosine ends at the
    shared floor ``min_lr_ratio * lr``). Why: Adam moves a parameter by at most about ``lr``
    per step, so a head initialised from scratch on top of a body fine-tuned at a small ``lr``
    (the chain student's transition table, 3e-4 x 1,200 steps x cosine = at most ~0.2 nats)
    cannot reach the logits it needs inside the budget."""
    lr_scales = lr_scales or {}

    def scale_of(name: str) -> float:
        return next((s for prefix, s in lr_scales.items() if name.startswith(prefix)), 1.0)

    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.dim() >= 2, scale_of(name)), []).append(p)
    # plain groups first, in the order of a model without scales (checkpoints keep their layout)
    order = sorted(groups, key=lambda k: (k[1] != 1.0, k[1], not k[0]))
    param_groups = [
        {
            "params": groups[k],
            "weight_decay": cfg.weight_decay if k[0] else 0.0,
            "lr": cfg.lr * k[1],
            "lr_scale": k[1],
        }
        for k in order
    ]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


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
    """Turns SIGINT/SIGTERM/SIGHUP into a flag checked at step boundaries.

    SIGHUP is what a run receives when its terminal goes away (a dropped ssh session): it gets
    the same checkpoint-and-exit as Ctrl-C, instead of dying with the steps since the last
    checkpoint.
    """

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
    )

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for s in self.SIGNALS:
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
        on_start: Callable[[], None] | None = None,
        config_key: str = "train",
        lr_scales: dict[str, float] | None = None,
    ):
        """``on_start`` runs on rank 0 once the run directory is locked, before anything else is
        written (the stages record their ``config.yaml`` there); ``config_key`` is this stage's
        section in the config (``teacher.train``), named in advice to the user; ``lr_scales``:
        learning-rate multipliers by parameter-name prefix (:func:`make_optimizer`)."""
        self.dist = distributed.setup(cfg.device)
        self.device = self.dist.device
        self.accum = cfg.grad_accum_steps
        self.streams = self.dist.world_size * self.accum
        if cfg.batch_size % self.streams:
            raise TsdfmError(
                f"train.batch_size={cfg.batch_size} (the global batch) must be divisible by "
                f"world size x grad_accum_steps = {self.dist.world_size} x {self.accum}; change "
                "batch_size, grad_accum_steps or --nproc_per_node"
            )
        self.micro_batch = cfg.batch_size // self.streams
        self.model, self.objective, self.cfg = model.to(self.device), objective, cfg
        if hasattr(objective, "to"):  # frozen models inside the objective (a student's teacher)
            objective.to(self.device)
        self.out_dir, self.stage, self.on_eval = Path(out_dir), stage, on_eval
        self.on_start, self.config_key = on_start, config_key
        self.progress = progress and self.dist.is_main
        self.train = BatchStream(train_data, cfg.batch_size, cfg.seed)
        self.valid = valid_data
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", cfg.keep_checkpoints)
        self.opt = make_optimizer(model, cfg, lr_scales)
        self.sched = make_scheduler(self.opt, cfg)
        self.ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
        # One generator per shard this rank computes (see the module docstring).
        first = self.dist.rank * self.accum
        self.generators = [
            make_generator(self._stream_seed(j), self.device)
            for j in range(first, first + self.accum)
        ]
        self.generator = self.generators[0]
        self.net: nn.Module = self._prepare_compute()
        self.step = 0
        self.bad_steps = 0
        self.consecutive_bad = 0
        self.elapsed = 0.0
        self.last_saved_step: int | None = None

    def _prepare_compute(self) -> nn.Module:
        """How the forward runs on this device: precision, TF32, ``torch.compile``, and the
        DDP wrapper across ranks. Returns the module the training step calls (``self.net``);
        ``self.model`` stays the bare module whose parameter names the checkpoints use."""
        cfg = self.cfg
        self.autocast_dtype = distributed.resolve_precision(cfg.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cfg.compile:
            self.model.compile()  # in place: parameter names (checkpoints) stay unchanged
        if not self.dist.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        # Dropout masks must differ between ranks (they see different rows); the global
        # RNG drives nothing else during training.
        torch.manual_seed(derive_seed(cfg.seed, 2, self.dist.rank))
        return DistributedDataParallel(
            self.model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            **_no_buffer_sync(),
        )

    def _stream_seed(self, shard: int) -> int:
        """Shard 0 keeps the run's seed (the one-process stream); others get derived seeds."""
        return self.cfg.seed if shard == 0 else derive_seed(self.cfg.seed, 1, shard)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly. Collective under torchrun: every rank must call it
        (the generator and RNG states of all shards and ranks are gathered)."""
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        gathered = distributed.all_gather_object(([g.get_state() for g in self.generators], rng))
        generators = [state for gens, _ in gathered for state in gens]
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "schedule": self._schedule(),
            "generator": generators[0],
            "generators": generators,  # one per shard, in shard order
            "noise_device": self.device.type,
            "rank_rng": [r for _, r in gathered],
            "world_size": self.dist.world_size,
            "grad_accum_steps": self.accum,
            "step": self.step,
            "bad_steps": self.bad_steps,
            "elapsed": self.elapsed,
        }

    def _check_resumable(self, state: dict[str, Any]) -> list:
        """The checkpoint's per-shard generator states, or a TsdfmError naming the fix."""
        generators = state.get("generators") or [state["generator"]]
        saved = len(generators)
        if saved != self.streams:
            world, accum = state.get("world_size", 1), state.get("grad_accum_steps", 1)
            hint = (
                f"e.g. this stage's train.grad_accum_steps={saved // self.dist.world_size} with "
                f"{self.dist.world_size} process(es), "
                if saved % self.dist.world_size == 0
                else ""
            )
            raise TsdfmError(
                f"the checkpoint in {self.ckpt.directory} was written with {saved} noise "
                f"stream(s) (world size {world} x grad_accum_steps {accum}), this run has "
                f"{self.streams} ({self.dist.world_size} x {self.accum}); an exact resume needs "
                f"world size x grad_accum_steps = {saved}: {hint}or start a new run with another "
                "--out"
            )
        saved_device = state.get("noise_device", "cpu")
        if saved_device != self.device.type:
            raise TsdfmError(
                f"the checkpoint in {self.ckpt.directory} was written on {saved_device} and this "
                f"run computes on {self.device.type}: random generator states do not carry over "
                f"between device types; resume with this stage's train.device={saved_device}, or "
                "start a new run with another --out"
            )
        return generators

    def _schedule(self) -> dict[str, float]:
        """The config values the learning-rate schedule is built from."""
        c = self.cfg
        return {
            "lr": c.lr,
            "steps": c.steps,
            "warmup_steps": c.warmup_steps,
            "min_lr_ratio": c.min_lr_ratio,
        }

    def _replay_schedule(self) -> None:
        """Put the scheduler where a fresh run of *this* config would be at ``self.step``.

        Used when a resume changes ``lr`` or ``steps``: the saved scheduler still encodes the
        old ones (a cosine past its old end even climbs again). Replaying the same ``step()``
        calls a fresh run makes gives exactly its learning rate from here on.
        """
        for group in self.opt.param_groups:
            group.pop("initial_lr", None)
            group["lr"] = self.cfg.lr * group.get("lr_scale", 1.0)
        self.sched = make_scheduler(self.opt, self.cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            for _ in range(self.step):
                self.sched.step()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        generators = self._check_resumable(state)
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TsdfmError(
                f"the checkpoint in {self.ckpt.directory} does not fit this stage's model "
                f"({str(e).strip().splitlines()[-1].strip()[:200]}): resume with the config it was trained with "
                f"({self.out_dir / 'config.yaml'}), or start a new run with another --out"
            ) from None
        first = self.dist.rank * self.accum
        for g, saved in zip(self.generators, generators[first : first + self.accum], strict=True):
            g.set_state(saved)
        # Global RNG (dropout only) per rank; with another world size there is no rank to map
        # it to, and the runs then differ only in dropout masks.
        rng = state.get("rank_rng")
        if rng is not None and len(rng) == self.dist.world_size:
            mine = rng[self.dist.rank]
            torch.set_rng_state(mine["torch"])
            if mine.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        self.step, self.bad_steps, self.elapsed = (
            state["step"],
            state["bad_steps"],
            state["elapsed"],
        )
        saved = state.get("schedule")
        if saved is not None and saved != self._schedule():
            self._replay_schedule()
            if self.dist.is_main:
                changed = ", ".join(
                    f"{k} {saved.get(k)} -> {v}"
                    for k, v in self._schedule().items()
                    if saved.get(k) != v
                )
                print(
                    f"[{self.stage}] schedule changed on resume ({changed}): from step "
                    f"{self.step} the learning rate follows the new schedule"
                )

    def save_checkpoint(self) -> Path:
        """Rank 0 writes; every rank waits until the checkpoint is complete (collective)."""
        state = self.state_dict()
        path = self.ckpt.directory / f"step_{self.step:07d}.pt"
        if self.dist.is_main:
            path = self.ckpt.save(state, self.step)
        distributed.barrier()
        self.last_saved_step = self.step
        return path

    # ------------------------------------------------------------------ batches and precision
    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return x
        return x.pin_memory().to(self.device, non_blocking=True)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _micro_batch(self, step: int, micro: int) -> torch.Tensor:
        if self.streams == 1:
            return self._to_device(self.train.batch(step))
        lo = (self.dist.rank * self.accum + micro) * self.micro_batch
        return self._to_device(self.train.shard(step, lo, lo + self.micro_batch))

    def _forward_backward(self) -> tuple[float, dict[str, float], bool]:
        """Gradients of this step summed over every shard; returns the loss and metrics (means
        over all shards) and whether every shard's loss was finite.

        Under DDP only the last micro-batch synchronises gradients (``no_sync`` before), and a
        non-finite loss still runs backward so that every rank enters the same all-reduces; the
        step is then skipped everywhere, since the finiteness flag is reduced too.
        """
        accum, ddp = self.accum, self.dist.enabled
        self.opt.zero_grad(set_to_none=True)
        loss_sum, metric_sums, finite = 0.0, {}, True
        for micro in range(accum):
            x1 = self._micro_batch(self.step, micro)
            sync = not ddp or micro == accum - 1
            with nullcontext() if sync else self.net.no_sync():
                with self._autocast():
                    loss, metrics = self.objective(self.net, x1, self.generators[micro])
                ok = bool(torch.isfinite(loss))
                if (ok or ddp) and loss.requires_grad:
                    (loss / accum if accum > 1 else loss).backward()
            finite = finite and ok
            loss_sum += float(loss.detach())
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
        if ddp:
            keys = list(metric_sums)
            stats = torch.tensor(
                [loss_sum, float(not finite), *metric_sums.values()], dtype=torch.float64
            )
            distributed.all_reduce_sum(stats)
            loss_sum, finite = float(stats[0]), float(stats[1]) == 0.0
            metric_sums = dict(zip(keys, stats[2:].tolist(), strict=True))
        n = self.streams
        return loss_sum / n, {k: v / n for k, v in metric_sums.items()}, finite

    def _agree(self, *flags: bool) -> list[bool]:
        """Each flag true on any rank is true on all (stop signals, time budget)."""
        if not self.dist.enabled:
            return list(flags)
        votes = distributed.all_reduce_sum(torch.tensor([float(f) for f in flags]))
        return [bool(v > 0) for v in votes.tolist()]

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def validate(self, model: nn.Module | None = None) -> float:
        """Mean objective over fixed validation batches with a fixed noise seed (comparable).

        One process, one shard: batches in order from one generator (the original stream).
        Otherwise every validation batch is cut into the same S shards as training, each shard
        with its own seed, and the ranks split the work; collective under torchrun.
        """
        model = model if model is not None else self.ema.module
        was = model.training
        model.eval()
        base = self.cfg.seed + VALIDATION_SEED_OFFSET
        stream = BatchStream(self.valid, self.cfg.batch_size, 0)
        n_batches = min(
            self.cfg.eval_batches, max(1, math.ceil(len(self.valid) / self.cfg.batch_size))
        )
        if self.streams == 1:
            gen = make_generator(base, self.device)
            losses = []
            for i in range(n_batches):
                with self._autocast():
                    losses.append(
                        float(self.objective(model, self._to_device(stream.batch(i)), gen)[0])
                    )
            result = float(np.mean(losses))
        else:
            total = 0.0
            for i in range(n_batches):
                for micro in range(self.accum):
                    shard = self.dist.rank * self.accum + micro
                    lo = shard * self.micro_batch
                    x = self._to_device(stream.shard(i, lo, lo + self.micro_batch))
                    gen = make_generator(derive_seed(base, i, shard), self.device)
                    with self._autocast():
                        total += float(self.objective(model, x, gen)[0])
            summed = distributed.all_reduce_sum(torch.tensor([total], dtype=torch.float64))
            result = float(summed[0]) / (n_batches * self.streams)
        model.train(was)
        return result

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool = False) -> FitResult:
        """Train to ``cfg.steps``. Under torchrun every rank calls this; rank 0 alone writes
        logs, progress and checkpoints (holding the run directory's lock, so a second process
        cannot train into it at the same time), and all ranks return the same result."""
        if not self.dist.is_main:
            return self._fit(resume)
        with run_lock(self.out_dir):
            return self._fit(resume)

    def _fit(self, resume: bool) -> FitResult:
        """The loop: one step, its log row, evaluation, checkpoint and stop check per turn.

        Each idea lives in its own method below: where the run starts (:meth:`_restore`), the
        step (:meth:`_train_step`), reporting (:class:`TrainLog`), checkpoint cadence
        (:meth:`_checkpoint_if_due`), stop conditions (:meth:`_stop_reason`) and what is
        shipped (:meth:`_result`).
        """
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.on_start is not None:  # inside the lock: a refused process writes nothing
                self.on_start()
        self._restore(resume)
        self.net.train()
        self.consecutive_bad = 0
        val_loss, interrupted, evaluated_at = None, False, None
        # A run resumed at or past its stop step takes no further step (it is already done).
        cfg = self.cfg
        last = min(cfg.steps, cfg.stop_at_step) if cfg.stop_at_step > 0 else cfg.steps
        with _StopFlag() as stop, TrainLog(self) as log:
            while self.step < last:
                loss, metrics, grad_norm = self._train_step()
                log.train_row(loss, metrics, grad_norm)
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    val_loss, evaluated_at = self._evaluate(log), self.step
                log.advance()
                self._checkpoint_if_due()
                reason = self._stop_reason(stop)
                if reason is not None:
                    fresh = val_loss if evaluated_at == self.step else None
                    val_loss, interrupted = self._stop_early(*reason, log, val_loss, fresh)
                    break
        return self._result(val_loss, interrupted, log.tokens_per_step)

    # ------------------------------------------------------------------ where the run starts
    def _restore(self, resume: bool) -> None:
        """Step 0 for a new run (its logs emptied); for ``--resume`` the newest intact checkpoint.

        The checkpoint is found whichever of ``latest.json`` / ``index.json`` survives (or by a
        scan of ``checkpoints/``); with none intact the run starts from step 0 and says so.
        Either way the logs keep only whole rows up to the step the run continues from.
        """
        main = self.dist.is_main
        self.last_saved_step = None
        if not resume:
            if main:
                remove_logs(self.out_dir)
            return
        loaded = None
        if self.ckpt.has_checkpoint():
            loaded = self.ckpt.load_latest(cleanup=main, verbose=main)
        if loaded is not None:
            self.load_state_dict(loaded.state)
            self.last_saved_step = loaded.step
            if main:
                print(f"[{self.stage}] resumed from step {loaded.step} ({self.ckpt.directory})")
        elif main:
            print(
                f"[{self.stage}] --resume: no intact checkpoint in {self.ckpt.directory}; "
                "starting from step 0"
            )
        if main:
            truncate_logs(self.out_dir, self.step)

    # ------------------------------------------------------------------ the step
    def _train_step(self) -> tuple[float, dict[str, float], float]:
        """One optimiser step, or a skipped one when the loss or gradient is not finite.

        Returns (loss, metrics, gradient norm). A skipped step still advances the schedule and
        the step counter, so a resumed run stays aligned with an uninterrupted one.
        """
        cfg = self.cfg
        t0 = time.perf_counter()
        loss, metrics, ok = self._forward_backward()
        grad_norm = float("nan")
        if ok:
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(
                    self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
                )
            )
            ok = math.isfinite(grad_norm)
        if ok:
            self.opt.step()
            self.ema.update_parameters(self.model)
            self.consecutive_bad = 0
        else:
            self._skip_bad_step()
        self.sched.step()
        self.step += 1
        self.elapsed += time.perf_counter() - t0
        return loss, metrics, grad_norm

    def _skip_bad_step(self) -> None:
        """Count a non-finite step; stop (exit 2) after ``max_bad_steps`` in a row."""
        self.opt.zero_grad(set_to_none=True)
        self.bad_steps += 1
        self.consecutive_bad += 1
        if self.dist.is_main:
            print(f"[{self.stage}] step {self.step}: non-finite loss/gradient, step skipped")
        if self.consecutive_bad < self.cfg.max_bad_steps:
            return
        where = f"{self.consecutive_bad} consecutive non-finite steps at step {self.step}"
        lr = f"{self.config_key}.lr={self.cfg.lr / 10:g}"
        if self.last_saved_step is None:
            raise TsdfmError(
                f"{where}: training stopped before its first checkpoint, so there is nothing to "
                f"resume. Lower the learning rate (e.g. {lr}) or check the data, then run the "
                "same command again"
            )
        raise TsdfmError(
            f"{where}: training stopped; the last good checkpoint (step {self.last_saved_step}) "
            f"is intact. Lower the learning rate or check the data, then continue with --resume "
            f"(e.g. --resume {lr})"
        )

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, log: TrainLog) -> float:
        """Validation loss of the EMA weights, plus the stage's own metrics (``on_eval``)."""
        val_loss = self.validate()
        if self.dist.is_main:
            with self._autocast():
                extra = self.on_eval(self.ema.module, self.step) if self.on_eval else {}
            log.eval_row(val_loss, extra)
        return val_loss

    # ------------------------------------------------------------------ checkpoint cadence
    def _checkpoint_if_due(self) -> None:
        """Every ``ckpt_every`` steps and at the last step, but never inside a run of
        non-finite steps: if it ends in a stop, the newest checkpoint must be the last good
        one, not a copy of the trouble."""
        cfg = self.cfg
        due = self.step % cfg.ckpt_every == 0 or self.step == cfg.steps
        if due and self.consecutive_bad == 0:
            self.save_checkpoint()

    # ------------------------------------------------------------------ stop conditions
    def _stop_reason(self, stop: _StopFlag) -> tuple[str, str] | None:
        """("budget", why) at the time cap or ``stop_at_step``, ("signal", which) after a stop
        signal, None otherwise (and always at the last step, where the run ends anyway).
        Collective under torchrun: a reason on any rank stops every rank at the same step."""
        cfg = self.cfg
        out_of_time = cfg.max_minutes > 0 and self.elapsed > 60 * cfg.max_minutes
        at_stop_step = 0 < cfg.stop_at_step <= self.step
        over_budget, stopped = self._agree(out_of_time or at_stop_step, stop.signum is not None)
        if self.step >= cfg.steps:
            return None
        if over_budget:
            why = (
                f"stop_at_step={cfg.stop_at_step} reached"
                if at_stop_step
                else f"time budget of {cfg.max_minutes} min reached"
            )
            return "budget", why
        if stopped:
            return "signal", f"signal {stop.signum}" if stop.signum is not None else "a signal"
        return None

    def _stop_early(
        self, kind: str, why: str, log: TrainLog, val_loss: float | None, fresh: float | None
    ) -> tuple[float | None, bool]:
        """Checkpoint and report an early end; returns (val_loss, interrupted).

        A budget stop is a finished run (validated, shipped); a signal stop is an interruption
        that ``--resume`` continues. ``fresh``: the validation loss of this very step when the
        eval cadence just computed it (then it is neither recomputed nor logged twice).
        """
        if kind == "budget":
            val_loss = fresh
            if val_loss is None:
                val_loss = self.validate()
                log.csv_row("eval.csv", {"step": self.step, "val_loss": round(val_loss, 6)})
            self.save_checkpoint()
            log.write(
                f"[{self.stage}] {why} at step {self.step}/{self.cfg.steps}; "
                f"finishing early (val_loss {val_loss:.4f})"
            )
            return val_loss, False
        self.save_checkpoint()
        log.write(
            f"[{self.stage}] stopped by {why} at step {self.step}; checkpoint saved. To "
            "continue, re-run the same command (`tsdfm train ...` with --resume; `tsdfm "
            "pipeline` resumes by itself)."
        )
        return val_loss, True

    # ------------------------------------------------------------------ what is shipped
    def _result(self, val_loss: float | None, interrupted: bool, tokens_per_step: int) -> FitResult:
        cfg, shipped, val_losses = self.cfg, "ema", None
        if not interrupted and cfg.ship != "ema":
            # An EMA lags a model that is still improving: in a short run it averages over weights
            # from the high-learning-rate phase. Keep whichever validates better (``ship: auto``).
            ema_loss = val_loss if val_loss is not None else self.validate()
            raw_loss = self.validate(self.model)
            val_losses = {"ema": ema_loss, "raw": raw_loss}
            if cfg.ship == "raw" or raw_loss < ema_loss:
                shipped, val_loss = "raw", raw_loss
            if self.dist.is_main:
                print(
                    f"[{self.stage}] validation: EMA {ema_loss:.4f}, raw {raw_loss:.4f} -> "
                    f"shipping {shipped}"
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


def _no_buffer_sync() -> dict[str, bool]:
    """DDP keyword that skips re-broadcasting buffers before every forward: the only buffers
    are constant rotary tables. Newer torch renamed ``broadcast_buffers``."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {key: False}
