"""Schedulers kappa(t): how fast the mixture path moves from the source to the data.

On the mixture path (DESIGN section 2) every position equals the data token ``x1[i]``
with probability ``kappa(t)`` and the source token ``x0[i]`` otherwise, so ``kappa`` must
satisfy ``kappa(0) = 0``, ``kappa(1) = 1`` and be increasing. Its derivative enters the
velocity ``u_t(y) = kappa'(t) / (1 - kappa(t)) * (p(y) - delta(y == x_t))`` and the
generalized-KL loss, so each scheduler gives ``d_kappa`` in closed form rather than by
finite differences.

The functions keep the dtype of ``t``: training calls them in float32, the sampler in
float64 (its jump probabilities must not lose precision near t = 1).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from tsdfm.errors import TsdfmError

SCHEDULERS = ("polynomial", "cosine")


def _as_float(t: Tensor | float) -> Tensor:
    """Return ``t`` as a floating tensor; Python numbers and integer tensors become float64."""
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.float64)


class Scheduler(ABC):
    """kappa(t) on [0, 1] with kappa(0) = 0, kappa(1) = 1, increasing, and its derivative."""

    name: str

    @abstractmethod
    def kappa(self, t: Tensor) -> Tensor:
        """Probability that a position already shows its data token at time ``t``."""

    @abstractmethod
    def d_kappa(self, t: Tensor) -> Tensor:
        """d kappa / dt at ``t`` (closed form)."""

    @abstractmethod
    def to_dict(self) -> dict:
        """Plain-data description; ``make_scheduler(**s.to_dict())`` rebuilds ``s``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"{type(self).__name__}({args})"


class PolynomialScheduler(Scheduler):
    """``kappa(t) = t**n``, ``kappa'(t) = n * t**(n - 1)``.

    n = 1 (linear) is the default of Gat et al. 2024; n > 1 keeps more source tokens early
    and unmasks most of the sequence late.
    """

    name = "polynomial"

    def __init__(self, exponent: float = 1.0) -> None:
        exponent = float(exponent)
        if not math.isfinite(exponent) or exponent <= 0:
            raise TsdfmError(
                f"scheduler exponent must be a finite number > 0, got {exponent}; "
                "use 1.0 for the linear schedule"
            )
        self.exponent = exponent

    def kappa(self, t: Tensor) -> Tensor:
        return _as_float(t) ** self.exponent

    def d_kappa(self, t: Tensor) -> Tensor:
        t = _as_float(t)
        if self.exponent == 1.0:
            return torch.ones_like(t)
        return self.exponent * t ** (self.exponent - 1.0)

    def to_dict(self) -> dict:
        return {"name": self.name, "exponent": self.exponent}


class CosineScheduler(Scheduler):
    """``kappa(t) = 1 - cos(pi t / 2)**2 = sin(pi t / 2)**2``.

    Derivative: ``kappa'(t) = pi * sin(pi t / 2) * cos(pi t / 2) = (pi / 2) * sin(pi t)``,
    zero at both ends, so the path moves slowly near the source and near the data.
    """

    name = "cosine"

    def kappa(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * _as_float(t)) ** 2

    def d_kappa(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.sin(math.pi * _as_float(t))

    def to_dict(self) -> dict:
        return {"name": self.name}


def make_scheduler(name: str, exponent: float = 1.0) -> Scheduler:
    """Build a scheduler by name ("polynomial" or "cosine"); ``exponent`` is polynomial-only."""
    if name == "polynomial":
        return PolynomialScheduler(exponent)
    if name == "cosine":
        return CosineScheduler()
    raise TsdfmError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
