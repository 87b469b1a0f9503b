"""Row names in tables and plots: one arm's seeds group together, temperatures do not.

A study labels rows ``"<arm> s<seed>"``; a model re-sampled at a temperature T != 1 is a
different point on the gen-PPL vs entropy frontier, not another seed. These two helpers are
the one rule that ``report`` (tables), ``plots`` and the study scripts share; they live apart
from ``harness``, which imports ``report``, so that no module imports one that imports it back.
"""

from __future__ import annotations

import re
from typing import Any


def without_seed(label: str) -> str:
    """A study's arm label without its training seed: ``"ar-k4 s2"`` -> ``"ar-k4"``."""
    return re.sub(r" s\d+$", "", label)


def temperature_tag(row: dict[str, Any]) -> str:
    """``" T=0.9"`` for a row sampled at a temperature other than 1, else ``""``.

    Rows of one model at several sampling temperatures (an equal-entropy comparison) must not
    be grouped as seeds of one arm: every table and plot appends this tag to the row's name.
    """
    t = row.get("temperature")
    return "" if t is None or float(t) == 1.0 else f" T={float(t):g}"
