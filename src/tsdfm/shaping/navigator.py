"""The navigator: energy-guided midpoint jumps for shortcut targets (TS-DFM, DESIGN.md section 4).

A blind midpoint is one stochastic jump ``m = jump(x, k, t -> t + h)``. The navigator draws K
candidate jumps from the same state with the same prediction ``k`` and keeps one by energy:

1. ``c_1..c_K = jump(x, k, t -> t + h)`` in ONE batched call on ``[B*K, L]`` (row-major: the K
   candidates of row b are rows ``b*K .. b*K + K - 1``);
2. look-ahead view ``v_j``: positions of ``c_j`` still at ``[MASK]`` take ``argmax k``, committed
   tokens stay (mask source); for the uniform source ``v_j = c_j``;
3. ``E_j = compass.energy(v_j)`` (one call on ``[B*K, L]``);
4. ``argmin``: keep ``argmin_j E_j``; ``softmax``: draw ``j ~ softmax(-E / tau)`` with the
   same generator (a float64 Gumbel-max draw on ``[B, K]``).

Navigation window (``t_start``, the paper's knob): only rows whose jump starts at
``t >= t_start`` are navigated; the others keep candidate 0, which is one of K i.i.d. blind
jumps, so in law a blind jump. ``t_start = 0`` (default) navigates every row, unchanged.

K = 1 makes exactly the blind call ``jump(x, k, t, h, generator)`` (no repeat, no selection
draw), so the random stream and the result are bit-identical to blind distillation: the K = 1
row of the ablation runs this code path, not a separate one.

Statistics (the check that the compass navigates at all): per call the energy gap
``mean_j E_j - E_chosen`` (~0 means selection changes nothing) and how often the chosen
candidate is not candidate 0 (the one a blind jump would have kept, up to RNG alignment).
They accumulate per midpoint index (``m1, m2, m3`` for RK4; reset by :meth:`begin_target`)
until :meth:`reset_stats`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from tsdfm.errors import TsdfmError
from tsdfm.flow.rng import categorical
from tsdfm.shaping.compass import Compass
from tsdfm.shaping.shortcut import JumpFn

SELECT_RULES = ("argmin", "softmax")


@dataclass
class Navigation:
    """One navigated jump: ``next [B, L]``, ``candidates``/``views [B, K, L]``,
    ``energies [B, K]``, ``chosen [B]``."""

    next: Tensor
    candidates: Tensor
    views: Tensor
    energies: Tensor
    chosen: Tensor
    navigated: Tensor | None = None  # [B] bool; None = every row (t_start = 0)

    @property
    def chosen_energy(self) -> Tensor:
        return self.energies.gather(1, self.chosen[:, None]).squeeze(1)

    @property
    def gap(self) -> Tensor:
        """``mean_j E_j - E_chosen`` per row (> 0: the kept candidate is better than average)."""
        return self.energies.mean(1) - self.chosen_energy


def look_ahead(candidates: Tensor, logits: Tensor, source: str, mask_id: int) -> Tensor:
    """Complete each candidate for scoring: ``[MASK]`` -> ``argmax logits``; others untouched.

    ``candidates [N, L]`` and ``logits [N, L, C]`` (the prediction that produced the jump).
    For the uniform source every position already holds a token: the candidate is its view.
    """
    if source == "uniform":
        return candidates
    return torch.where(candidates == mask_id, logits.argmax(-1), candidates)


class Navigator:
    """K candidate midpoint jumps scored by ``compass``; see the module docstring."""

    def __init__(
        self,
        compass: Compass,
        candidates: int = 1,
        select: str = "argmin",
        tau: float = 1.0,
        source: str = "mask",
        mask_id: int = -1,
        t_start: float = 0.0,
    ):
        if candidates < 1:
            raise TsdfmError(f"candidates (K) must be >= 1, got {candidates}")
        if select not in SELECT_RULES:
            raise TsdfmError(f"unknown select {select!r}; choose one of {', '.join(SELECT_RULES)}")
        if not tau > 0:
            raise TsdfmError(f"tau must be > 0, got {tau}")
        if source not in ("mask", "uniform"):
            raise TsdfmError(f"unknown source {source!r}; choose mask or uniform")
        if source == "mask" and mask_id < 0:
            raise TsdfmError("the mask source needs mask_id")
        if not 0.0 <= t_start < 1.0:
            raise TsdfmError(f"t_start must be in [0, 1), got {t_start}")
        self.t_start = float(t_start)
        self.compass, self.candidates, self.select = compass, int(candidates), select
        self.tau, self.source, self.mask_id = float(tau), source, mask_id
        self.recording = True
        self.last: Navigation | None = None
        self._midpoint = 0
        self.reset_stats()

    # ------------------------------------------------------------------ the jump
    def navigate(
        self,
        base_jump: JumpFn,
        x: Tensor,
        logits: Tensor,
        t: Tensor,
        h: Tensor,
        generator: torch.Generator,
    ) -> Navigation:
        b, length = x.shape
        k = self.candidates
        rep = _repeat_rows(k, b)
        logits_k = rep(logits)
        cand = base_jump(rep(x), logits_k, rep(t), rep(h), generator)
        views = look_ahead(cand, logits_k, self.source, self.mask_id)
        energies = self.compass.energy(views).view(b, k)
        chosen = self.choose(energies, generator)
        navigated = None
        if self.t_start > 0:
            navigated = _row_times(t, b).to(chosen.device) >= self.t_start
            chosen = torch.where(navigated, chosen, torch.zeros_like(chosen))
        cand, views = cand.view(b, k, length), views.view(b, k, length)
        nxt = cand[torch.arange(b, device=cand.device), chosen]
        nav = Navigation(nxt, cand, views, energies, chosen, navigated)
        if self.recording:
            self._record(nav)
        return nav

    def choose(self, energies: Tensor, generator: torch.Generator) -> Tensor:
        """Index per row: ``argmin E`` or a draw from ``softmax(-E / tau)``; 0 when K = 1."""
        if energies.shape[1] == 1:
            return torch.zeros(energies.shape[0], dtype=torch.long, device=energies.device)
        if self.select == "argmin":
            return energies.argmin(1)
        return categorical(-energies.double() / self.tau, generator).to(energies.device)

    def navigated_jump(self, base_jump: JumpFn) -> JumpFn:
        """A drop-in :data:`JumpFn` for ``shortcut_target``; ``fn.navigator`` is this object."""

        def _jump(x: Tensor, logits: Tensor, t: Tensor, h: Tensor, generator) -> Tensor:
            return self.navigate(base_jump, x, logits, t, h, generator).next

        _jump.navigator = self  # type: ignore[attr-defined]
        return _jump

    # ------------------------------------------------------------------ statistics
    def begin_target(self) -> None:
        """A new shortcut target starts: the next call is midpoint m1."""
        self._midpoint = 0

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Navigate without recording statistics (e.g. during validation)."""
        was, self.recording = self.recording, False
        try:
            yield
        finally:
            self.recording = was

    def reset_stats(self) -> None:
        self._sums: dict[str, float] = {}
        self._rows: dict[str, int] = {}
        self._calls = 0

    def _add(self, key: str, values: Tensor) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + float(values.double().sum())
        self._rows[key] = self._rows.get(key, 0) + values.numel()

    def _record(self, nav: Navigation) -> None:
        self.last = nav
        self._calls += 1
        self._midpoint += 1
        keep = nav.navigated  # statistics describe navigated rows only
        pick = (lambda v: v) if keep is None else (lambda v: v[keep])
        gap = pick(nav.gap)
        self._add("gap", gap)
        self._add(f"gap_m{self._midpoint}", gap)
        self._add("changed", pick((nav.chosen != 0).double()))
        self._add("energy", pick(nav.chosen_energy))
        self._add("energy_mean", pick(nav.energies.mean(1)))

    def stats(self) -> dict[str, float]:
        """Row-weighted means since :meth:`reset_stats`: ``gap``, ``gap_m1..``, ``changed``
        (fraction of rows keeping a candidate other than 0), ``energy`` (chosen),
        ``energy_mean`` (all candidates), and ``calls``. Empty means are NaN."""
        out = {
            k: self._sums[k] / self._rows[k] if self._rows[k] else math.nan
            for k in sorted(self._sums)
        }
        for k in ("gap", "changed", "energy", "energy_mean"):
            out.setdefault(k, math.nan)
        out["calls"] = float(self._calls)
        return out


def _row_times(t, b: int) -> Tensor:
    """``t`` (a float, a scalar tensor, ``[B]`` or ``[B, 1]``) as one time per row, ``[B]``."""
    tt = torch.as_tensor(t).reshape(-1)
    return tt.expand(b) if tt.numel() == 1 else tt


def _repeat_rows(k: int, b: int):
    """``a -> a.repeat_interleave(k, 0)`` for per-row tensors; identity when K = 1 or scalar."""

    def rep(a):
        if k == 1 or not isinstance(a, Tensor) or a.dim() == 0 or a.shape[0] != b:
            return a
        return a.repeat_interleave(k, 0)

    return rep


def build_navigator(
    shaping, teacher, compass_dir=None, chain=None, seq_len: int | None = None
) -> Navigator:
    """The navigator a ``ShapingConfig`` asks for, with its compass loaded and checked."""
    from tsdfm.shaping.compass import load_compass

    compass = load_compass(shaping.compass, compass_dir, teacher, chain, seq_len)
    c = teacher.config
    return Navigator(
        compass,
        shaping.candidates,
        shaping.select,
        shaping.tau,
        c.source,
        c.mask_id,
        shaping.t_start,
    )


def shaped_jump(shaping, teacher, compass_dir=None, chain=None, seq_len: int | None = None):
    """``navigator.navigated_jump(blind_jump(...))`` for this teacher: the jump_fn of a shaped
    (or K = 1 navigated) student. ``fn.navigator`` gives the statistics."""
    from tsdfm.flow import make_scheduler
    from tsdfm.shaping.shortcut import blind_jump

    nav = build_navigator(shaping, teacher, compass_dir, chain, seq_len)
    c = teacher.config
    return nav.navigated_jump(
        blind_jump(make_scheduler(c.scheduler, c.exponent), c.source, c.mask_id)
    )
