"""Where a training run reports: CSV logs, TensorBoard, the progress bar.

The CSV logs (``log.csv``, ``eval.csv``) hold one row per logged step, whole rows only.

A row is appended with one ``write`` of a complete line, so a kill can at worst leave a partial
*last* line (no newline). Resume rewrites each log to the rows a checkpoint at step S vouches
for: complete lines (ending in a newline, with the header's number of fields) whose step is at
most S. That drops the partial line (which the next append would otherwise merge with its own
row) and the rows of steps that are about to be trained again (which would be duplicates).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tsdfm.artifacts import atomic_write_text
from tsdfm.errors import TsdfmError

LOGS = ("log.csv", "eval.csv")


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` (with a header first when the file is new) in a single write."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(row))
    if not path.exists():
        w.writeheader()
    w.writerow(row)
    with open(path, "a", newline="") as f:
        f.write(buf.getvalue())


def remove_logs(out_dir: Path) -> None:
    """A fresh (not resumed) run starts its logs empty."""
    for name in LOGS:
        (Path(out_dir) / name).unlink(missing_ok=True)


def truncate_logs(out_dir: Path, step: int) -> int:
    """Keep only whole rows with ``step <= step`` in every log; returns how many were dropped."""
    dropped = 0
    for name in LOGS:
        path = Path(out_dir) / name
        if path.is_file():
            dropped += _truncate(path, step)
    return dropped


def _truncate(path: Path, step: int) -> int:
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].endswith("\n"):  # not even a whole header
        path.unlink()
        return 0
    header, keep, dropped = lines[0], [], 0
    width = len(next(csv.reader([header])))
    for line in lines[1:]:
        row_step = _row_step(line, width)
        if row_step is not None and row_step <= step:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, header + "".join(keep))
    return dropped


def _row_step(line: str, width: int) -> int | None:
    """The step of a whole row, or None for a partial or malformed line."""
    if not line.endswith("\n"):
        return None
    fields = next(csv.reader([line]), [])
    if len(fields) != width:
        return None
    try:
        return int(fields[0])
    except ValueError:
        return None


class TrainLog:
    """Where a run reports (rank 0 only): ``log.csv`` every ``log_every`` steps, ``eval.csv``
    at each evaluation, TensorBoard when asked for, and the progress bar."""

    def __init__(self, trainer):  # a training.loop.Trainer
        self.trainer, self.cfg = trainer, trainer.cfg
        self.main = trainer.dist.is_main
        self.tokens_per_step = self.cfg.batch_size * trainer.train.data[0].shape[-1]
        self.tb = _tensorboard(trainer.out_dir) if self.cfg.tensorboard and self.main else None
        self.bar = tqdm(
            total=self.cfg.steps,
            initial=trainer.step,
            desc=trainer.stage,
            disable=not trainer.progress,
            dynamic_ncols=True,
        )
        self.t_window, self.tokens_window = time.perf_counter(), 0

    def __enter__(self) -> TrainLog:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()

    def csv_row(self, name: str, row: dict[str, Any]) -> None:
        if self.main:
            append_row(self.trainer.out_dir / name, row)

    def write(self, message: str) -> None:
        if self.main:
            self.bar.write(message)

    def advance(self) -> None:
        self.bar.update(1)

    def train_row(self, loss: float, metrics: dict[str, float], grad_norm: float) -> None:
        """Count the step's tokens; every ``log_every`` steps (and at the end) write a row."""
        step, cfg = self.trainer.step, self.cfg
        self.tokens_window += self.tokens_per_step
        if not self.main or not (step % cfg.log_every == 0 or step == cfg.steps):
            return
        now = time.perf_counter()
        tps = self.tokens_window / max(now - self.t_window, 1e-9)
        self.t_window, self.tokens_window = now, 0
        row = {
            "step": step,
            "loss": round(loss, 6),
            "lr": self.trainer.sched.get_last_lr()[0],
            "grad_norm": round(grad_norm, 4),
            "tokens_per_s": round(tps, 1),
            "elapsed_s": round(self.trainer.elapsed, 2),
            **{k: round(float(v), 6) for k, v in metrics.items()},
        }
        self.csv_row("log.csv", row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, step)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}", refresh=False)

    def eval_row(self, val_loss: float, extra: dict[str, Any]) -> None:
        step = self.trainer.step
        self.csv_row("eval.csv", {"step": step, "val_loss": round(val_loss, 6), **extra})
        if self.tb is not None:
            self.tb.add_scalar("valid/loss", val_loss, step)
        self.write(f"[{self.trainer.stage}] step {step}: val_loss {val_loss:.4f}")


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TsdfmError(
            "train.tensorboard=true needs the tensorboard package: pip install tensorboard"
        ) from e
    return SummaryWriter(str(out_dir / "tensorboard"))
