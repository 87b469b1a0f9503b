"""A small causal transformer LM: energy compass, project evaluators, autoregressive baseline.

Same :class:`~tsdfm.models.layers.Block` as the denoiser with ``causal=True``. Sampling uses a
key/value cache so each new token costs one single-position forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tsdfm.models.layers import Block, init_weights
from tsdfm.models.pretrained import PretrainedMixin


@dataclass
class CausalConfig:
    vocab_size: int
    num_classes: int
    max_len: int
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 2
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bos_id: int = -1  # -1: use the mask id as the begin-of-sequence token
    tokenizer_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class CausalLM(PretrainedMixin, nn.Module):
    """Predicts token i from tokens < i; a BOS token (by default ``[MASK]``) predicts token 0."""

    model_type = "causal"
    config_class = CausalConfig

    def __init__(self, config: CausalConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.blocks = nn.ModuleList(
            Block(c.dim, c.n_heads, c.mlp_ratio, c.max_len + 1, True, c.dropout)
            for _ in range(c.n_layers)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes, bias=False)
        init_weights(self)

    @property
    def bos_id(self) -> int:
        return self.config.bos_id if self.config.bos_id >= 0 else self.config.vocab_size - 1

    def forward(self, x: torch.Tensor, caches: list[dict] | None = None) -> torch.Tensor:
        h = self.embed(x)
        for i, block in enumerate(self.blocks):
            h = block(h, None, None if caches is None else caches[i])
        return self.head(self.norm(h)).float()

    def with_bos(self, ids: torch.Tensor) -> torch.Tensor:
        bos = torch.full((ids.shape[0], 1), self.bos_id, dtype=ids.dtype, device=ids.device)
        return torch.cat([bos, ids], dim=1)

    def token_nll(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-token NLL [B, L] of ``ids`` (every token, including the first, via BOS).

        Cross-entropy on the flattened ``[B*L, C]`` logits: the ``[B, C, L]`` layout (class dim
        in the middle) is several times slower on CPU, and this is the compass's hot path.
        """
        logits = self(self.with_bos(ids)[:, :-1])
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), reduction="none"
        )
        return nll.view(ids.shape)

    @torch.no_grad()
    def energy(self, ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean per-token NLL per sequence [B]: low energy = coherent. One forward per batch."""
        nll = self.token_nll(ids)
        if weights is None:
            return nll.mean(dim=1)
        w = weights.float()
        return (nll * w).sum(1) / w.sum(1).clamp_min(1.0)

    @torch.no_grad()
    def generate(
        self,
        num: int,
        length: int,
        generator: torch.Generator,
        use_cache: bool = True,
        temperature: float = 1.0,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling, float64 Gumbel-max draws; KV cache or full recompute (same ids).

        ``prefix [num, P]`` (a prompt) is fed after BOS in one pass and returned unchanged as
        the first P of the ``length`` ids; only the remaining ``length - P`` are drawn.
        """
        device = self.head.weight.device
        seq = torch.full((num, 1), self.bos_id, dtype=torch.long, device=device)
        if prefix is not None:
            if prefix.dim() != 2 or prefix.shape[0] != num or prefix.shape[1] > length:
                raise ValueError(f"prefix must be [num={num}, P <= {length}], got {prefix.shape}")
            seq = torch.cat([seq, prefix.to(device=device, dtype=torch.long)], dim=1)
        caches: list[dict] | None = [{} for _ in self.blocks] if use_cache else None
        for i in range(length - seq.shape[1] + 1):
            if caches is not None:
                logits = self(seq[:, -1:] if i > 0 else seq, caches)[:, -1]
            else:
                logits = self(seq)[:, -1]
            logp = torch.log_softmax(logits.double() / temperature, dim=-1)
            u = torch.rand(logp.shape, dtype=torch.float64, generator=generator, device=device)
            g = -torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))
            seq = torch.cat([seq, (logp + g).argmax(-1, keepdim=True)], dim=1)
        return seq[:, 1:]
