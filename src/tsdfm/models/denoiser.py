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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tsdfm.models.latent import draw_latent
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
        self.latent_emb = nn.Embedding(c.latent_codes, c.dim) if c.latent_codes else None
        self.blocks = nn.ModuleList(
            Block(c.dim, c.n_heads, c.mlp_ratio, c.max_len, False, c.dropout, c.cond_dim)
            for _ in range(c.n_layers)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes, bias=False)
        init_weights(self)
        if self.latent_emb is not None:
            nn.init.normal_(self.latent_emb.weight, std=LATENT_INIT_STD)

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
    ) -> torch.Tensor:
        """x: [B, L] ids -> logits [B, L, num_classes] (float32). ``z [B]``: the mixture
        student's latent codes (drawn here from the global generator when omitted); a model
        without a latent refuses one."""
        if x.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {x.shape[1]} > model max_len {self.config.max_len}")
        if z is not None and self.latent_emb is None:
            raise ValueError("this denoiser has no latent (latent_codes = 0): do not pass z")
        h = self.embed(x)
        if self.latent_emb is not None:
            h = h + self.latent(z, x.shape[0], x.device).to(h.dtype)
        cond = self.conditioning(t, dt)
        for block in self.blocks:
            h = block(h, cond)
        return self.head(self.norm(h)).float()


def build_student(teacher: Denoiser, teacher_dir: str = "", latent_codes: int = 0) -> Denoiser:
    """Teacher weights plus a step-size embedding; outputs equal the teacher's for any dt.

    If the teacher had no conditioning at all (mask source), zero-initialised adaLN modulations
    are added to every block; otherwise the existing modulations are reused and the new dt
    embedding starts at exactly zero. ``latent_codes > 0`` builds a mixture student (plus a
    code embedding, small and random: its teacher up to that perturbation, module doc).
    """
    cfg = DenoiserConfig(
        **{**teacher.config.__dict__, "dt_cond": True, "latent_codes": int(latent_codes)}
    )
    cfg.extra = {**teacher.config.extra, "teacher": teacher_dir}
    student = Denoiser(cfg)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected, unexpected
    # Everything the teacher lacked must be the zero-initialised conditioning path.
    assert all(
        k.startswith("latent_emb.")
        or (k.startswith(("dt_emb.", "blocks.")) and ("dt_emb" in k or "modulation" in k))
        for k in missing
    ), missing
    return student
