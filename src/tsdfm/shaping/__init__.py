"""Distillation targets and trajectory shaping: shortcut targets, energy compasses, navigator."""

from tsdfm.shaping.compass import (
    COMPASS_KINDS,
    CausalCompass,
    Compass,
    OracleCompass,
    SelfCompass,
    load_compass,
)
from tsdfm.shaping.midpoints import MIDPOINTS, midpoint_jump
from tsdfm.shaping.navigator import (
    Navigation,
    Navigator,
    build_navigator,
    look_ahead,
    shaped_jump,
)
from tsdfm.shaping.shortcut import (
    blind_jump,
    distillation_loss,
    sample_step_and_time,
    shortcut_target,
    step_size_weights,
    step_sizes,
)

__all__ = [
    "COMPASS_KINDS",
    "MIDPOINTS",
    "CausalCompass",
    "Compass",
    "Navigation",
    "Navigator",
    "OracleCompass",
    "SelfCompass",
    "blind_jump",
    "build_navigator",
    "distillation_loss",
    "load_compass",
    "look_ahead",
    "midpoint_jump",
    "sample_step_and_time",
    "shaped_jump",
    "shortcut_target",
    "step_size_weights",
    "step_sizes",
]
