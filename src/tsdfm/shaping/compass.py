"""Energy compasses for trajectory shaping (TS-DFM, DESIGN.md section 4).

A compass scores complete token sequences ("look-ahead views") with an energy: lower means
more coherent. The navigator draws K candidate midpoint jumps, scores their views with one
compass call and keeps a low-energy one. Every compass gives

    E(x) = (1/L) sum_i -log p(x_i | context_i)         (nats per token, [B])

with a different model ``p`` and context:

* :class:`CausalCompass` (``"ar"``, the default): a small causal LM, ``context_i = x_<i``. One
  forward pass of a model at most a quarter of the teacher's size.
* :class:`SelfCompass` (``"self"``): the frozen teacher's own denoiser, no extra model. See
  the class for why it is a *grouped* pseudo-log-likelihood and what it costs.
* :class:`OracleCompass` (``"oracle"``): the true Markov chain of the ``markov`` corpus,
  ``E = -log p_chain(x) / L`` exactly. The upper bound of what navigation can achieve.

Contract: ``energy`` takes ``LongTensor[B, L]`` of clean ids (no ``[MASK]``), returns
``FloatTensor[B]``, builds no graph, draws no random numbers and is deterministic, so adding a
compass never changes the random stream of training. A new compass is a new class here plus a
branch in :func:`load_compass`; nothing else changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import Tensor

from tsdfm.errors import TsdfmError

COMPASS_KINDS = ("ar", "self", "oracle")


class Compass(ABC):
    """Energy of complete sequences: ``energy(views [B, L]) -> [B]``, lower = more coherent."""

    name: str

    @abstractmethod
    def energy(self, views: Tensor) -> Tensor:
        """Mean per-token negative log-likelihood of each view (no grad, deterministic)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class CausalCompass(Compass):
    """``E(x) = -(1/L) sum_i log p_LM(x_i | x_<i)`` with a small causal LM (one forward pass)."""

    name = "ar"

    def __init__(self, model):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def energy(self, views: Tensor) -> Tensor:
        return self.model.energy(views)


class SelfCompass(Compass):
    """Scores with the frozen teacher denoiser: a grouped pseudo-log-likelihood.

    Why not ``-log p_teacher(x_i | x)`` with nothing masked, in one pass: a mask-source teacher
    is trained only on masked positions, so its outputs at visible positions were never fitted
    and mean nothing. Instead positions are split into ``groups`` interleaved sets
    (``i mod G``); for each set the view is shown with that set masked and every position is
    scored where it was hidden::

        E(x) = -(1/L) sum_i log p_teacher(x_i | x with set(i mod G) masked, t_G)

    ``t_G`` solves ``kappa(t_G) = 1 - 1/G``, the visible fraction the teacher sees (it matters
    only for a time-conditioned teacher). With G = 2 every position sees both neighbours, which
    is the exact full conditional for an order-1 chain. Uniform source: the teacher is trained
    on every position, so one pass on the unmasked view at ``t_G`` (a fraction ``1/G`` assumed
    noise) scores ``-log p_teacher(x1_i = x_i | x_t = x)`` directly.

    Cost per energy call: G teacher forwards per view for the mask source (batched into one call
    of size G*B), one for the uniform source. With the default G = 2 this is 2 full-size teacher
    passes per candidate, about 8x the cost of a quarter-size causal compass.
    """

    name = "self"

    def __init__(self, teacher, groups: int = 2):
        if groups < 2:
            raise TsdfmError(f"the self compass needs groups >= 2, got {groups}")
        from tsdfm.flow import make_scheduler

        c = teacher.config
        self.teacher, self.groups = teacher.eval(), int(groups)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.source, self.mask_id = c.source, c.mask_id
        self.t_visible = _time_at_kappa(make_scheduler(c.scheduler, c.exponent), 1 - 1 / groups)

    def _forward(self, x: Tensor) -> Tensor:
        return self.teacher(x, torch.full((x.shape[0],), self.t_visible, device=x.device))

    @torch.no_grad()
    def energy(self, views: Tensor) -> Tensor:
        b, length = views.shape
        if self.source == "uniform":
            logp = torch.log_softmax(self._forward(views).float(), dim=-1)
            return -logp.gather(-1, views.unsqueeze(-1)).squeeze(-1).mean(1)
        g = self.groups
        pos = torch.arange(length, device=views.device)
        hide = pos[None, :] % g == torch.arange(g, device=views.device)[:, None]  # [G, L]
        masked = torch.where(hide[:, None, :], self.mask_id, views[None]).reshape(g * b, length)
        logp = torch.log_softmax(self._forward(masked).float(), dim=-1).view(g, b, length, -1)
        nll = -logp.gather(-1, views[None].expand(g, b, length).unsqueeze(-1)).squeeze(-1)
        return (nll * hide[:, None, :]).sum((0, 2)) / length


class OracleCompass(Compass):
    """``E(x) = -log p_chain(x) / L`` under the true Markov chain (float64, exact)."""

    name = "oracle"

    def __init__(self, chain):
        self.chain = chain

    @torch.no_grad()
    def energy(self, views: Tensor) -> Tensor:
        nll = self.chain.nll_per_token(views.detach().cpu().numpy())
        return torch.from_numpy(nll).to(views.device)


def _time_at_kappa(scheduler, target: float) -> float:
    """``t`` with ``kappa(t) = target`` by bisection (kappa is increasing on [0, 1])."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(scheduler.kappa(torch.tensor(mid, dtype=torch.float64))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _causal_model_dir(path: Path) -> Path:
    """Accept a causal run directory or the model directory inside it."""
    return path / "model" if (path / "model" / "config.json").is_file() else path


def load_compass(
    kind: str,
    compass_dir: str | Path | None = None,
    teacher=None,
    chain=None,
    seq_len: int | None = None,
) -> Compass:
    """Build the compass ``kind`` (``ar`` | ``self`` | ``oracle``), checking it fits the teacher.

    ``ar`` loads the causal LM at ``compass_dir`` (a run dir or its ``model/``) and refuses one
    trained with another tokenizer than the teacher's; ``self`` needs ``teacher``; ``oracle``
    needs the chain of a ``markov`` corpus. ``seq_len``: the data length the views will have.
    """
    if kind == "ar":
        if compass_dir is None:
            raise TsdfmError(
                "the 'ar' compass needs a trained causal LM: pass --compass DIR (train one with "
                "`tsdfm train causal --role compass`), or use --shaping self / oracle"
            )
        from tsdfm.models import CausalLM, load_pretrained

        model_dir = _causal_model_dir(Path(compass_dir))
        if not model_dir.is_dir():
            raise TsdfmError(
                f"compass directory not found: {compass_dir}; train it with "
                "`tsdfm train causal --role compass`"
            )
        model, _ = load_pretrained(model_dir, expect=CausalLM)
        _check_fits(model.config, model_dir, teacher, seq_len)
        return CausalCompass(model)
    if kind == "self":
        if teacher is None:
            raise TsdfmError("the 'self' compass scores with the teacher: pass the teacher model")
        return SelfCompass(teacher)
    if kind == "oracle":
        if chain is None:
            raise TsdfmError(
                "the 'oracle' compass needs the true generating chain, which only the markov "
                "corpus has; use --shaping compass --compass DIR or --shaping self on this data"
            )
        if teacher is not None and teacher.config.num_classes != chain.vocab_size:
            raise TsdfmError(
                f"the chain has {chain.vocab_size} symbols but the teacher predicts "
                f"{teacher.config.num_classes} classes; use the data the teacher was trained on"
            )
        return OracleCompass(chain)
    raise TsdfmError(f"unknown compass {kind!r}; choose one of {', '.join(COMPASS_KINDS)}")


def _check_fits(cc, model_dir: Path, teacher, seq_len: int | None) -> None:
    """A compass must read the teacher's ids: same tokenizer, long enough context."""
    if teacher is not None:
        tc = teacher.config
        if cc.tokenizer_fingerprint and tc.tokenizer_fingerprint:
            if cc.tokenizer_fingerprint != tc.tokenizer_fingerprint:
                raise TsdfmError(
                    f"the compass in {model_dir} was trained with another tokenizer than the "
                    "teacher (fingerprints differ); train the compass on the teacher's data"
                )
        if cc.num_classes != tc.num_classes:
            raise TsdfmError(
                f"the compass in {model_dir} predicts {cc.num_classes} classes, the teacher "
                f"{tc.num_classes}; train the compass on the teacher's data"
            )
    if seq_len is not None and cc.max_len < seq_len:
        raise TsdfmError(
            f"the compass in {model_dir} reads at most {cc.max_len} tokens but the data has "
            f"seq_len {seq_len}; train the compass on this data"
        )
