"""Training objectives plugged into the shared loop.

An objective maps ``(model, clean batch x1, generator)`` to ``(loss, metrics)``. The loop owns
everything else (optimiser, EMA, checkpoints, logging), so a new stage is a new objective only.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from tsdfm.flow import (
    changeable_positions,
    cross_entropy,
    generalized_kl,
    jump,
    make_scheduler,
    sample_path,
    sample_time,
)


class Objective(Protocol):
    def __call__(
        self, model: nn.Module, x1: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class DenoisingObjective:
    """DFM teacher loss: ``t ~ U[0,1)``, ``x_t`` from the mixture path, CE (or generalized KL)
    of the denoiser against ``x1`` on the positions that can still change (masked positions for
    the mask source, all positions for the uniform source). Unmasked positions of the mask source
    never change at sampling time, so spending loss on copying them only dilutes the signal.
    """

    def __init__(
        self,
        source: str,
        scheduler: str,
        exponent: float,
        mask_id: int,
        num_classes: int,
        loss: str = "ce",
    ):
        self.source, self.mask_id, self.num_classes, self.loss = source, mask_id, num_classes, loss
        self.scheduler = make_scheduler(scheduler, exponent)

    def __call__(self, model, x1, generator):
        t = sample_time(x1.shape[0], generator).to(x1.device)
        x_t = sample_path(
            x1, t, self.scheduler, self.source, self.mask_id, self.num_classes, generator
        )
        logits = model(x_t, t)
        weights = (x_t == self.mask_id) if self.source == "mask" else None
        if self.loss == "gkl":
            loss = generalized_kl(logits, x1, x_t, t, self.scheduler, weights)
        else:
            loss = cross_entropy(logits, x1, weights)
        return loss, {}


class NextTokenObjective:
    """Causal LM loss: next-token cross-entropy (first token predicted from BOS).

    The same numbers as ``CausalLM.token_nll``, but the forward pass goes through ``model(...)``
    itself: under DDP ``model`` is the wrapper, and only its ``forward`` arms the gradient
    all-reduce (calling a method of the inner module would bypass it).
    """

    def __call__(self, model, x1, generator):
        inner = unwrap(model)
        logits = model(inner.with_bos(x1)[:, :-1])
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x1.reshape(-1), reduction="none"
        )
        return nll.view(x1.shape).mean(), {}


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrapper."""
    while True:
        for attr in ("module", "_orig_mod"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            return model


class ShortcutObjective:
    """Few-step student loss (FS-DFM): forward KL to a shortcut target on changeable positions.

    Rows with ``dt = 1/N`` (the teacher's own resolution) are anchored to the frozen teacher's
    denoiser (or to ``anchor``, e.g. the markov chain's exact denoiser); larger steps imitate
    the shortcut target built from the EMA student at ``dt/2`` through midpoints made by
    ``jump_fn`` (blind or navigated). ``target_model`` is bound to the trainer's EMA copy after
    the trainer is built.

    A navigated ``jump_fn`` (one with a ``navigator`` attribute) adds its statistics to the
    metrics, with fixed keys so every log row has the same columns: ``nav_gap`` (energy gap
    mean-minus-chosen), ``nav_changed`` (chosen != candidate 0), ``nav_energy`` (chosen),
    ``nav_gap_m1..`` (per midpoint). They are means over the training calls since the last
    report, reset every ``stats_every`` calls (the trainer's ``log_every``), so a logged row
    covers its whole logging interval; validation calls (model in eval mode) are not recorded.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student_cfg,
        mask_id: int,
        num_classes: int,
        jump_fn=None,
        stats_every: int = 1,
        anchor: nn.Module | None = None,
    ):
        from tsdfm.shaping import blind_jump
        from tsdfm.shaping.shortcut import resolve_committed

        c = teacher.config
        self.teacher, self.cfg, self.mask_id, self.num_classes = (
            teacher,
            student_cfg,
            mask_id,
            num_classes,
        )
        self.source = c.source
        self.scheduler = make_scheduler(c.scheduler, c.exponent)
        self.jump_fn = jump_fn or blind_jump(self.scheduler, self.source, mask_id)
        self.navigator = getattr(self.jump_fn, "navigator", None)
        blind = student_cfg.midpoint == "model" and (
            self.navigator is None or self.navigator.candidates == 1
        )
        self.committed = resolve_committed(
            student_cfg.target_committed, self.source, student_cfg.target_space, blind
        )
        self.stats_every, self._train_calls = max(1, int(stats_every)), 0
        self.target_model: nn.Module | None = None
        self.anchor = anchor if anchor is not None else teacher

    def to(self, device: torch.device) -> ShortcutObjective:
        """Move the frozen models the targets need (teacher, compass, midpoint denoiser) to
        the training device."""
        self.teacher.to(device)
        self.anchor.to(device)
        oracle = getattr(self.jump_fn, "oracle", None)
        if isinstance(oracle, nn.Module):
            oracle.to(device)
        compass = getattr(self.navigator, "compass", None)
        for value in vars(compass).values() if compass is not None else ():
            if isinstance(value, nn.Module):
                value.to(device)
        return self

    def target_model_fn(self, generator):
        """The network the shortcut targets are built from (the EMA student, or the teacher
        before the trainer binds it), as ``fn(x, t, h)``."""
        ema = self.target_model if self.target_model is not None else self.teacher
        return lambda x, tt, hh: ema(x, tt, hh)

    def targets(self, x_t, t, dt, generator, sample: bool = False):
        """``(target log-probs [B, L, C], anchor rows [B])``; with ``sample`` also ``y [B, L]``,
        one draw of the step's joint law (the anchor's jump on anchor rows, the end of the two
        chained half steps elsewhere; drawn after the targets, so these do not change)."""
        from tsdfm.shaping import shortcut_target

        n = self.cfg.teacher_steps
        anchor = dt <= (1.0 / n) * 1.0001
        target = torch.empty(*x_t.shape, self.num_classes, device=x_t.device)
        y = x_t.clone() if sample else None
        with torch.no_grad():
            if anchor.any():
                a = anchor.nonzero().squeeze(1)
                target[a] = torch.log_softmax(self.anchor(x_t[a], t[a], dt[a]).float(), dim=-1)
            if (~anchor).any():
                r = (~anchor).nonzero().squeeze(1)
                if self.navigator is not None:
                    self.navigator.begin_target()
                out = shortcut_target(
                    self.target_model_fn(generator),
                    x_t[r],
                    t[r],
                    dt[r],
                    method=self.cfg.target,
                    space=self.cfg.target_space,
                    scheduler=self.scheduler,
                    source=self.source,
                    mask_id=self.mask_id,
                    jump_fn=self.jump_fn,
                    generator=generator,
                    temperature=self.cfg.target_temperature,
                    committed=self.committed,
                    carry_over=self.cfg.carry_over,
                    return_sample=sample,
                )
                if sample:
                    target[r], y[r] = out
                else:
                    target[r] = out
            if sample and anchor.any():
                y[a] = jump(
                    x_t[a], target[a], t[a].double(), dt[a].double(), self.scheduler,
                    self.source, self.mask_id, generator,
                )  # fmt: skip
        return (target, anchor, y) if sample else (target, anchor)

    def draw_rows(self, x1, generator):
        """``(dt, t, x_t)`` for a batch of clean rows: step sizes, start times, path states."""
        from tsdfm.shaping import sample_step_and_time

        dt, t = sample_step_and_time(
            x1.shape[0], self.cfg.teacher_steps, self.cfg.dt_weights, generator
        )
        x_t = sample_path(
            x1, t, self.scheduler, self.source, self.mask_id, self.num_classes, generator
        )
        return dt, t, x_t

    def step_targets(self, model, x_t, t, dt, generator, sample: bool = False):
        """:meth:`targets`, with the navigator's statistics paused on validation calls."""
        if self.navigator is not None and not model.training:
            with self.navigator.paused():
                return self.targets(x_t, t, dt, generator, sample)
        return self.targets(x_t, t, dt, generator, sample)

    def changeable(self, x_t):
        """The positions a step can still change: masked ones (mask source), all (uniform)."""
        return changeable_positions(x_t, self.source, self.mask_id)

    def __call__(self, model, x1, generator):
        from tsdfm.shaping import distillation_loss

        dt, t, x_t = self.draw_rows(x1, generator)
        target, anchor = self.step_targets(model, x_t, t, dt, generator)
        loss = distillation_loss(model(x_t, t, dt), target, self.changeable(x_t))
        metrics = {"anchor_frac": float(anchor.float().mean())}
        if self.navigator is not None and model.training:
            metrics.update(self.navigation_metrics())
        return loss, metrics

    def navigation_metrics(self) -> dict[str, float]:
        """The navigator's means since the last report (fixed keys), reset every stats_every."""
        s = self.navigator.stats()
        midpoints = 3 if self.cfg.target == "rk4" else 1
        keys = ["gap", "changed", "energy"] + [f"gap_m{i}" for i in range(1, midpoints + 1)]
        out = {f"nav_{k}": s.get(k, float("nan")) for k in keys}
        self._train_calls += 1
        if self._train_calls % self.stats_every == 0:
            self.navigator.reset_stats()
        return out
