"""The ``summary.json`` every training stage writes when it finishes.

One writer for all stages so the fields other tools read (``complete``, ``parameters``,
``final_val_loss``, timing) are spelled the same everywhere; ``complete: true`` is what the
pipeline checks to skip a finished stage.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from tsdfm.artifacts import atomic_write_json, now_iso
from tsdfm.training.loop import FitResult


def write_summary(
    out_dir: Path,
    stage: str,
    result: FitResult,
    n_params: int,
    data_dir: Path,
    model_config: Any,
    **extra: Any,
) -> dict[str, Any]:
    """Write ``out_dir/summary.json`` (atomically) and return what was written."""
    summary = {
        "stage": stage,
        "complete": True,
        "finished": now_iso(),
        "parameters": n_params,
        "steps": result.steps,
        "final_val_loss": result.final_val_loss,
        "train_seconds": round(result.seconds, 1),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "bad_steps": result.bad_steps,
        "shipped": result.shipped,
        "val_losses": result.val_losses,
        "data": str(data_dir),
        **extra,
        "model_config": asdict(model_config),
    }
    atomic_write_json(Path(out_dir) / "summary.json", summary)
    return summary
