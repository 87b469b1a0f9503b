"""Transformer building blocks shared by the DFM denoiser and the causal LM.

One :class:`Block` serves both: ``causal=False`` for the bidirectional denoiser, ``causal=True``
(with an optional key/value cache) for the compass, evaluators and the autoregressive baseline.

Conditioning (time t, step size dt) enters through adaLN: a conditioning vector c produces a
shift, scale and gate per sub-layer, used as ``x + (1 + gate) * f(norm(x) * (1 + scale) + shift)``.
With the modulation weights at zero this is an ordinary pre-LN block, which is what lets a student
be built from a teacher with *identical* outputs at initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Rotary(nn.Module):
    """Rotary position embedding (RoPE): rotate channel pairs by angle ``pos * base**(-2i/d)``.

    Relative positions matter for text; learned absolute positions left a small CPU teacher stuck
    on the unigram plateau (DESIGN.md section 3), rotary ones did not.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        pos = torch.arange(max_len, dtype=torch.float32)
        angles = torch.outer(pos, inv_freq)  # [max_len, head_dim/2]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: [B, H, L, D] -> same shape, rotated according to positions offset..offset+L-1."""
        length = x.shape[-2]
        if offset + length > self.cos.shape[0]:
            raise ValueError(
                f"sequence of length {offset + length} exceeds the model's max length "
                f"{self.cos.shape[0]}"
            )
        cos = self.cos[offset : offset + length].to(x.dtype)
        sin = self.sin[offset : offset + length].to(x.dtype)
        return self._rotate(x, cos, sin)

    def at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [N, H, D] for N queries at sequence ``positions [N]`` -> rotated, same shape."""
        cos = self.cos[positions].to(x.dtype)[:, None]
        sin = self.sin[positions].to(x.dtype)[:, None]
        return self._rotate(x, cos, sin)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, max_len: int, causal: bool, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim, self.causal, self.dropout = (
            n_heads,
            dim // n_heads,
            causal,
            dropout,
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rotary = Rotary(self.head_dim, max_len)

    def forward(
        self, x: torch.Tensor, cache: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        offset = 0 if cache is None or "k" not in cache else cache["k"].shape[-2]
        q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=-2)
                v = torch.cat([cache["v"], v], dim=-2)
            cache["k"], cache["v"] = k, v
        # A causal query block that starts at `offset` sees all cached keys plus its own prefix.
        causal = self.causal and length > 1
        if causal and offset > 0:
            mask = torch.ones(length, offset + length, dtype=torch.bool, device=x.device).tril(
                offset
            )
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
            )
        return self.out(y.transpose(1, 2).reshape(b, length, d))

    def forward_at(self, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Bidirectional attention output at the N query positions ``(rows[n], cols[n])`` only.

        Keys and values still come from every position of ``x [B, L, D]``; queries, the
        softmax and the output projection run for the N selected positions (``[N, D]`` in the
        order given). Each query's result is the same dot products as in :meth:`forward`, so
        this is exact, not an approximation: it is what lets the last block and the vocabulary
        head skip the positions the sampler will not move. Queries are grouped per row into a
        padded ``[B, Qmax]`` block for one SDPA call; padded slots are computed and dropped.
        """
        if self.causal:
            raise ValueError("forward_at is for bidirectional attention")
        b, length, d = x.shape
        h, hd = self.n_heads, self.head_dim
        w = self.qkv.weight
        kv = F.linear(x, w[d:]).view(b, length, 2, h, hd).permute(2, 0, 3, 1, 4)
        k, v = self.rotary(kv[0]), kv[1]
        q = self.rotary.at(F.linear(x[rows, cols], w[:d]).view(-1, h, hd), cols)  # [N, H, hd]
        # slot of each query within its row's group (rows need not be sorted)
        counts = torch.bincount(rows, minlength=b)
        order = torch.argsort(rows, stable=True)
        slot = torch.empty_like(rows)
        slot[order] = (
            torch.arange(rows.numel(), device=x.device) - (counts.cumsum(0) - counts)[rows[order]]
        )
        padded = q.new_zeros(b, int(counts.max()), h, hd)
        padded[rows, slot] = q
        y = F.scaled_dot_product_attention(padded.transpose(1, 2), k, v)  # [B, H, Qmax, hd]
        return self.out(y.transpose(1, 2)[rows, slot].reshape(-1, d))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float, dropout: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.gelu(self.up(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LN transformer block with optional adaLN modulation from a conditioning vector."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        mlp_ratio: float,
        max_len: int,
        causal: bool = False,
        dropout: float = 0.0,
        cond_dim: int | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads, max_len, causal, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)
        self.modulation: nn.Linear | None = None
        if cond_dim is not None:
            self.add_modulation(cond_dim)

    def add_modulation(self, cond_dim: int) -> None:
        """Attach zero-initialised adaLN weights: the block's function is unchanged."""
        dim = self.norm1.normalized_shape[0]
        self.modulation = nn.Linear(cond_dim, 6 * dim)
        self.modulation._no_reinit = True
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.modulation is None or cond is None:
            x = x + self.attn(self.norm1(x), cache)
            return x + self.mlp(self.norm2(x))
        s1, c1, g1, s2, c2, g2 = self.modulation(cond)[:, None, :].chunk(6, dim=-1)
        x = x + (1 + g1) * self.attn(self.norm1(x) * (1 + c1) + s1, cache)
        return x + (1 + g2) * self.mlp(self.norm2(x) * (1 + c2) + s2)

    def forward_at(
        self, x: torch.Tensor, cond: torch.Tensor | None, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """The block's output ``[N, D]`` at positions ``(rows, cols)`` only (bidirectional).

        Keys and values need every position's normalised input; the residual stream, the
        attention output and the MLP are computed at the selected positions alone. Exact: the
        last block of a denoiser whose output is needed at a few positions costs their share.
        """
        if self.modulation is None or cond is None:
            y = x[rows, cols] + self.attn.forward_at(self.norm1(x), rows, cols)
            return y + self.mlp(self.norm2(y))
        s1, c1, g1, s2, c2, g2 = self.modulation(cond)[:, None, :].chunk(6, dim=-1)
        a = self.attn.forward_at(self.norm1(x) * (1 + c1) + s1, rows, cols)
        s2, c2, g1, g2 = (m[rows, 0] for m in (s2, c2, g1, g2))
        y = x[rows, cols] + (1 + g1) * a
        return y + (1 + g2) * self.mlp(self.norm2(y) * (1 + c2) + s2)


class ScalarEmbedding(nn.Module):
    """Sinusoidal features of a scalar (t or dt) followed by a 2-layer MLP.

    ``zero_init_output`` makes the embedding exactly 0 at initialisation, so adding it to an
    existing conditioning vector changes nothing until training moves it.
    """

    def __init__(
        self, dim: int, freq_dim: int = 128, scale: float = 1000.0, zero_init_output: bool = False
    ):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        if zero_init_output:
            self.mlp[2]._no_reinit = True
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=s.device) / half)
        args = (s.float() * self.scale)[:, None] * freqs[None]
        feats = torch.cat([args.cos(), args.sin()], dim=-1)
        return self.mlp(feats)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-style small normal init for linear and embedding weights.

    Layers flagged ``_no_reinit`` (zero-initialised modulations and dt embeddings) keep their
    zeros: they are what makes a fresh student equal to its teacher.
    """
    for m in module.modules():
        if getattr(m, "_no_reinit", False):
            continue
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
