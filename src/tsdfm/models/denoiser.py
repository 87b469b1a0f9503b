"""The DFM denoiser: a bidirectional transformer predicting ``p(x1[i] | x_t, t)``.

Input ids include ``[MASK]`` (the last id); the output covers the ``num_classes`` ids a clean
token can take. Optional conditioning:

* time ``t`` through adaLN (needed for the uniform source, where x_t does not reveal t; off by
  default for the mask source, which makes forward caching exact);
* step size ``dt`` (the few-step student), whose embedding starts at zero so that a student built
  from a teacher computes exactly the teacher's function until training moves it;
* a per-sample latent code ``z`` in ``0..K-1`` (``latent_codes = K > 0``, the mixture student
  of docs/mixture.md): its embedding is added to every position's input embedding (one shared
  vector per sample, so a code shifts all positions together). Why the input stream and not the
  adaLN conditioning: a mask-source teacher has no modulations, so the student's start at zero,
  and a latent entering through them has no first-order effect (the product of two zero
  weights); on the L = 2 test chain (tests/test_mixture.py) it stayed on the symmetric saddle
  where every code gives the same output. The code embeddings start small and random
  (``LATENT_INIT_STD``), not at zero: with identical codes the mixture likelihood's gradient is
  identical for every code, so they would never separate. A fresh mixture student is therefore
  its teacher up to that perturbation, not exactly.
* a chain of codes along the positions (``latent_chain``, the chain student of
  docs/mixture.md, :class:`tsdfm.models.latent.LatentChain`): read by the output layer, after
  the body, so the network pass is the product student's; ``z`` is then uniform noise
  ``[B, L]`` from which the codes are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tsdfm.flow.path import changeable_positions
from tsdfm.models.latent import LatentChain, draw_latent
from tsdfm.models.layers import Block, ScalarEmbedding, init_weights
from tsdfm.models.pretrained import PretrainedMixin

# Scale of the code embeddings of a fresh mixture student (the token embeddings' init scale).
LATENT_INIT_STD = 0.02


@dataclass
class DenoiserConfig:
    vocab_size: int
    num_classes: int
    max_len: int
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    time_cond: bool = False
    dt_cond: bool = False
    latent_codes: int = 0
    latent_chain: bool = False
    chain_features: str = "last"
    source: str = "mask"
    scheduler: str = "polynomial"
    exponent: float = 1.0
    tokenizer_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1

    @property
    def cond_dim(self) -> int | None:
        return self.dim if (self.time_cond or self.dt_cond) else None


# On the CPU the positions= path runs the body over chunks of about this many positions
# (whole rows): a [B*L, 4*dim] MLP activation at batch 32 is 16 MB, beyond the cache, and the
# allocator returns such blocks to the OS between calls, so every step page-faults them in
# again; smaller chunks stay in cache and are reused (same results: rows are independent).
# Tiny config, batch 32, 8 steps, in one run: 3.53 s unchunked, 3.43 s at 512, 3.26 s at 1024.
CPU_CHUNK_POSITIONS = 1024


class Denoiser(PretrainedMixin, nn.Module):
    model_type = "denoiser"
    config_class = DenoiserConfig

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.time_emb = ScalarEmbedding(c.dim) if c.time_cond else None
        # dt embedding: zero output at init when a time embedding already feeds the modulations
        # (so nothing changes); otherwise the modulations themselves start at zero (Block) and the
        # dt embedding needs a non-zero output so that their gradients are not stuck at zero.
        self.dt_emb = (
            ScalarEmbedding(c.dim, scale=1.0, zero_init_output=c.time_cond) if c.dt_cond else None
        )
        if c.latent_codes < 0 or (c.latent_codes and not c.dt_cond):
            raise ValueError(
                f"latent_codes = {c.latent_codes}: a latent needs a step-size-conditioned "
                "student (dt_cond) and at least 1 code (0 = no latent)"
            )
        if c.latent_chain and not c.latent_codes:
            raise ValueError("latent_chain needs latent_codes >= 2 (the number of codes)")
        if c.chain_features != "last" and not c.latent_chain:
            raise ValueError("chain_features is an option of a chain student (latent_chain)")
        per_sample = c.latent_codes and not c.latent_chain
        self.latent_emb = nn.Embedding(c.latent_codes, c.dim) if per_sample else None
        self.blocks = nn.ModuleList(
            Block(c.dim, c.n_heads, c.mlp_ratio, c.max_len, False, c.dropout, c.cond_dim)
            for _ in range(c.n_layers)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes, bias=False)
        init_weights(self)
        if self.latent_emb is not None:
            nn.init.normal_(self.latent_emb.weight, std=LATENT_INIT_STD)
        # after init_weights: the chain has its own initialisation (a sticky chain, small offsets)
        self.chain = (
            LatentChain(c.dim, c.latent_codes, c.chain_features) if c.latent_chain else None
        )

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    def conditioning(self, t: torch.Tensor | None, dt: torch.Tensor | None) -> torch.Tensor | None:
        cond = None
        if self.time_emb is not None:
            if t is None:
                raise ValueError("this denoiser is time-conditioned: pass t")
            cond = self.time_emb(t)
        if self.dt_emb is not None:
            if dt is None:
                raise ValueError("this denoiser is step-size-conditioned: pass dt")
            e = self.dt_emb(torch.log2(dt.float().clamp_min(1e-6)))
            cond = e if cond is None else cond + e
        return cond

    @property
    def supports_positions(self) -> bool:
        """The sampler may ask for logits at selected positions only (``forward(...,
        positions=)``); a mixture student's code enters every position's input, so it may
        not. A chain student may: its codes run along the whole row, so it pays the body at
        every position, but its offsets and head only where tokens move (:meth:`_chain_at`)."""
        return not self.config.latent_codes or self.config.latent_chain

    def latent(self, z: torch.Tensor | None, rows: int, device: torch.device) -> torch.Tensor:
        """The code's embedding ``[B, 1, dim]`` (``z`` drawn from the global generator when
        None: a caller that knows nothing of latents still gets a mixture step)."""
        k = self.config.latent_codes
        if z is None:
            z = draw_latent(rows, k, None, device)
        if z.shape != (rows,) or z.is_floating_point():
            raise ValueError(f"latent z must be integer codes of shape [B], got {tuple(z.shape)}")
        return self.latent_emb(z).unsqueeze(1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | None = None,
        dt: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, L] ids -> logits [B, L, num_classes] (float32).

        ``z [B]``: the mixture student's latent codes (drawn here from the global generator when
        omitted); a model without a latent refuses one.

        ``positions`` (bool ``[B, L]``): return only the logits there, ``[N, num_classes]`` in
        the row-major order of ``x[positions]``. The body still sees every position (attention
        is bidirectional), but the last block's queries, MLP and the vocabulary head run at the
        N positions alone, and identical input rows (same ids, t and dt, e.g. an all-[MASK]
        first step) go through the body once. Exact: each returned logit is computed by the
        same operations as in the full call. The finite-step sampler moves about L of the
        8L positions in 8 steps, and these are decided before the call (see
        ``tsdfm.flow.jump``), so it pays the head for L positions, as an AR model does. A
        mixture student's code enters every position, so it takes the plain path; a chain
        student runs its body in full and its head at the N positions (``z`` its noise).
        """
        if x.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {x.shape[1]} > model max_len {self.config.max_len}")
        if z is not None and not self.config.latent_codes:
            raise ValueError("this denoiser has no latent (latent_codes = 0): do not pass z")
        per_sample = self.latent_emb is not None
        plain = per_sample or (self.training and self.config.dropout > 0)
        if positions is not None and plain:
            return self.forward(x, t, dt, z)[positions]  # a code or dropout: the plain path
        if positions is not None and self.chain is not None:
            return self._chain_at(x, t, dt, z, positions)
        if positions is not None:
            return self._forward_at(x, t, dt, positions)
        if self.chain is not None:
            if z is None:
                z = torch.rand(x.shape, device=x.device)
            h, g = self._chain_features(x, t, dt)
            return self.head(self.chain(h, z, g)).float()
        h = self.embed(x)
        if self.latent_emb is not None:
            h = h + self.latent(z, x.shape[0], x.device).to(h.dtype)
        return self.head(self.features(h, t, dt)).float()

    def features(self, h: torch.Tensor, t, dt) -> torch.Tensor:
        """The body on input embeddings ``h [B, L, dim]``, normalised: what the head reads."""
        cond = self.conditioning(t, dt)
        for block in self.blocks:
            h = block(h, cond)
        return self.norm(h)

    def _chain_features(self, x: torch.Tensor, t, dt) -> tuple[torch.Tensor, torch.Tensor]:
        """A chain student's ``(h, g)``: the head's features and what its transitions read
        (``h`` itself, or the last block's input: ``config.chain_features``)."""
        cond = self.conditioning(t, dt)
        h = self._trunk(x, cond)
        last = self.norm(self.blocks[-1](h, cond))
        return last, self.chain.transition_features(h, last, self._changeable(x))

    def _changeable(self, x: torch.Tensor) -> torch.Tensor | None:
        """The positions of ``x`` a step can change, for a chain reading ``changeable``
        features (None for the other chains: they do not look)."""
        if self.chain is None or self.chain.features != "changeable":
            return None
        return changeable_positions(x, self.config.source, self.mask_id)

    def _trunk(self, x: torch.Tensor, cond) -> torch.Tensor:
        """Every block but the last on the ids ``x``: the last block's input ``[B, L, dim]``
        (what the positions= paths share before they select positions)."""
        h = self.embed(x)
        for block in self.blocks[:-1]:
            h = block(h, cond)
        return h

    def chain_terms(
        self, x: torch.Tensor, t, dt, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A chain student's step law, for its exact likelihood (one body pass): ``(logits
        [B, L, K, num_classes]`` under every code, ``log P(z_i = b | z_{i-1} = a) [B, L, K,
        K])`` (float32; at position 0 every row is the law of ``z_0``).

        ``positions`` (bool ``[B, L]``): the head only there, ``logits [N, K, num_classes]`` in
        ``positions.nonzero()`` order. Why: the head under every code is ``K`` times a product
        student's head and most of a chain step's cost on a large vocabulary, and a position
        the step cannot change (a visible token, mask source) contributes nothing to the
        likelihood; the transitions still cover the whole row."""
        if self.chain is None:
            raise ValueError("chain_terms needs a chain student (latent_chain)")
        h, g = self._chain_features(x, t, dt)
        if positions is not None:
            h = h[positions]
        logits = self.head(h.unsqueeze(-2) + self.chain.all_offsets(h)).float()
        return logits, self.chain.log_transitions(g)

    def _chain_at(self, x, t, dt, u, positions: torch.Tensor) -> torch.Tensor:
        """A chain student's logits at ``positions`` only. Its codes run along the whole row, so
        whatever its transitions read is computed at every position: the head's features
        (``chain_features="last"``: the whole body, the last block included), the last
        block's input (``"penultimate"``: then the last block runs at the N positions alone,
        as in :meth:`_forward_at`), or the head's features at the changeable positions and
        the last block's input elsewhere (``"changeable"``: the last block at the masked
        positions on the mask source, everywhere on the uniform source). Identical rows (the
        all-[MASK] first step) go through the body once; the code offsets and the head run at
        the N positions alone. The same operations as the full call at every returned logit."""
        rows, cols = _positions(x, positions)
        if rows.numel() == 0:
            return self.head.weight.new_zeros(0, self.config.num_classes).float()
        if u is None:
            u = torch.rand(x.shape, device=x.device)
        x, t, dt, which = _distinct_rows(x, t, dt)
        at = rows if which is None else which[rows]  # the distinct row of each position
        cond = self.conditioning(t, dt)
        n = x.shape[0]  # on the CPU the body runs over row chunks, as in _forward_at
        per_chunk = max(1, CPU_CHUNK_POSITIONS // x.shape[1]) if x.device.type == "cpu" else n
        if n <= per_chunk:
            g, h_at = self._chain_rows(x, cond, at, cols)
        else:
            g, h_at = [], None
            for a in range(0, n, per_chunk):
                b = min(a + per_chunk, n)
                sel = ((at >= a) & (at < b)).nonzero().squeeze(1)
                part = None if cond is None else cond[a:b]
                g_part, h_part = self._chain_rows(x[a:b], part, at[sel] - a, cols[sel])
                g.append(g_part)
                h_at = h_part.new_empty(rows.numel(), h_part.shape[1]) if h_at is None else h_at
                h_at[sel] = h_part
            g = torch.cat(g)
        codes = self.chain.draw_codes(g if which is None else g[which], u)
        return self.head(self.chain.offset(h_at, codes[rows, cols])).float()

    def _chain_rows(self, x, cond, rows, cols) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g [B, L, dim], h [N, dim])`` of :meth:`_chain_at` for the rows ``x``: the
        transition features at every position and the head's features at ``(rows, cols)``."""
        h = self._trunk(x, cond)
        changeable = self._changeable(x)
        if self.chain.reads_last or (changeable is not None and bool(changeable.all())):
            last = self.norm(self.blocks[-1](h, cond))
            return self.chain.transition_features(h, last, changeable), last[rows, cols]
        if changeable is not None:
            return self._changeable_rows(h, cond, changeable, rows, cols)
        g = self.chain.transition_features(h, None)
        if rows.numel() == 0:  # a chunk with nothing to move still draws its codes
            return g, h.new_zeros(0, h.shape[-1])
        return g, self.norm(self.blocks[-1].forward_at(h, cond, rows, cols))

    def _changeable_rows(
        self, h, cond, changeable, rows, cols
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_chain_rows` for ``chain_features="changeable"``: the last block at the
        changeable positions (what the transitions read there) and at ``(rows, cols)`` (what
        the head reads; on the mask source a subset), its input everywhere else."""
        need = changeable.clone()
        need[rows, cols] = True
        at = need.nonzero(as_tuple=True)
        relay = self.chain.relay_features(h)
        if at[0].numel() == 0:
            return relay, h.new_zeros(0, h.shape[-1])
        head = relay.index_put(at, self.norm(self.blocks[-1].forward_at(h, cond, *at)))
        return torch.where(changeable.unsqueeze(-1), head, relay), head[rows, cols]

    def _forward_at(self, x, t, dt, positions: torch.Tensor) -> torch.Tensor:
        rows, cols = _positions(x, positions)
        if rows.numel() == 0:
            return self.head.weight.new_zeros(0, self.config.num_classes).float()
        x, t, dt, which = _distinct_rows(x, t, dt)
        if which is not None:
            rows = which[rows]
        cond = self.conditioning(t, dt)
        per_chunk = max(1, CPU_CHUNK_POSITIONS // x.shape[1])
        if x.device.type != "cpu" or x.shape[0] <= per_chunk:
            return self._rows_at(x, cond, rows, cols)
        out = None
        for a in range(0, x.shape[0], per_chunk):
            b = min(a + per_chunk, x.shape[0])
            sel = ((rows >= a) & (rows < b)).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            part = self._rows_at(
                x[a:b], None if cond is None else cond[a:b], rows[sel] - a, cols[sel]
            )
            out = part.new_empty(rows.numel(), part.shape[1]) if out is None else out
            out[sel] = part
        return out

    def _rows_at(self, x, cond, rows, cols) -> torch.Tensor:
        h = self.blocks[-1].forward_at(self._trunk(x, cond), cond, rows, cols)
        return self.head(self.norm(h)).float()


def _positions(x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of the bool mask ``positions`` (checked to have ``x``'s shape)."""
    if positions.shape != x.shape or positions.dtype != torch.bool:
        raise ValueError(f"positions must be a bool mask of x's shape {tuple(x.shape)}")
    return positions.nonzero(as_tuple=True)


def _distinct_rows(x, t, dt):
    """``(x, t, dt)`` with repeated rows dropped, and ``which`` mapping each original row to its
    distinct one (None when all rows differ). Rows repeat when a batch starts from one template
    (every mask-source sample's first step sees the same all-[MASK] or prompt row)."""
    if x.shape[0] < 2:
        return x, t, dt, None
    per_row = [v is not None and v.dim() == 1 and v.shape[0] == x.shape[0] for v in (t, dt)]
    key = [x]
    for v, row in zip((t, dt), per_row, strict=True):
        if row:  # float bits, so that only exactly equal times count as equal
            key.append(v.float().view(torch.int32).to(x.dtype)[:, None])
    keys = torch.cat(key, dim=1) if len(key) > 1 else x
    if bool((keys == keys[:1]).all()):  # the common case: one template, checked cheaply
        first = torch.zeros(1, dtype=torch.long, device=x.device)
        which = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    else:
        uniq, which = torch.unique(keys, dim=0, return_inverse=True)
        if uniq.shape[0] == x.shape[0]:
            return x, t, dt, None
        first = torch.full((uniq.shape[0],), x.shape[0], dtype=torch.long, device=x.device)
        first.scatter_reduce_(0, which, torch.arange(x.shape[0], device=x.device), "amin")
    t, dt = (v[first] if row else v for v, row in zip((t, dt), per_row, strict=True))
    return x[first], t, dt, which


def build_student(
    teacher: Denoiser,
    teacher_dir: str = "",
    latent_codes: int = 0,
    latent_chain: bool = False,
    chain_features: str = "last",
) -> Denoiser:
    """Teacher weights plus a step-size embedding; outputs equal the teacher's for any dt.

    If the teacher had no conditioning at all (mask source), zero-initialised adaLN modulations
    are added to every block; otherwise the existing modulations are reused and the new dt
    embedding starts at exactly zero. ``latent_codes > 0`` builds a mixture student (plus a
    code embedding, small and random: its teacher up to that perturbation, module doc);
    with ``latent_chain`` too, a chain student (a :class:`LatentChain` head, likewise near).
    """
    cfg = DenoiserConfig(
        **{
            **teacher.config.__dict__,
            "dt_cond": True,
            "latent_codes": int(latent_codes),
            "latent_chain": bool(latent_chain),
            "chain_features": chain_features,
        }
    )
    cfg.extra = {**teacher.config.extra, "teacher": teacher_dir}
    student = Denoiser(cfg)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected, unexpected
    # Everything the teacher lacked must be the zero-initialised conditioning path.
    assert all(
        k.startswith(("latent_emb.", "chain."))
        or (k.startswith(("dt_emb.", "blocks.")) and ("dt_emb" in k or "modulation" in k))
        for k in missing
    ), missing
    return student
