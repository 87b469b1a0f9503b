"""Distillation targets and trajectory shaping: shortcut targets, (later) compass and navigator."""

from tsdfm.shaping.shortcut import (
    blind_jump,
    distillation_loss,
    sample_step_and_time,
    shortcut_target,
    step_size_weights,
    step_sizes,
)

__all__ = [
    "blind_jump",
    "distillation_loss",
    "sample_step_and_time",
    "shortcut_target",
    "step_size_weights",
    "step_sizes",
]
