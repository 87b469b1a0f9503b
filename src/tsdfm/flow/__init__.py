"""Discrete flow matching maths: schedulers, the mixture path, losses, and the sampler.

Pure tensor code, no I/O. See DESIGN section 2 for the formulas; each module's docstring
states the one it implements.
"""

from tsdfm.flow.filtering import filter_logits
from tsdfm.flow.jump import JUMP_RULES, jump, switch_probability
from tsdfm.flow.loss import cross_entropy, generalized_kl
from tsdfm.flow.path import SOURCES, changeable_positions, sample_path, sample_source, sample_time
from tsdfm.flow.rng import categorical
from tsdfm.flow.sampler import SampleResult, sample
from tsdfm.flow.scheduler import (
    SCHEDULERS,
    CosineScheduler,
    PolynomialScheduler,
    Scheduler,
    make_scheduler,
)

__all__ = [
    "JUMP_RULES",
    "SCHEDULERS",
    "SOURCES",
    "CosineScheduler",
    "PolynomialScheduler",
    "SampleResult",
    "Scheduler",
    "categorical",
    "changeable_positions",
    "cross_entropy",
    "filter_logits",
    "generalized_kl",
    "jump",
    "make_scheduler",
    "sample",
    "sample_path",
    "sample_source",
    "sample_time",
    "switch_probability",
]
