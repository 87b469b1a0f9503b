"""Token-level NLL of many variable-length sequences under any causal LM, in padded batches.

A sequence ``x = (b, t_1, ..., t_n)`` (``b`` an optional begin-of-sequence token) is scored as
``sum_j -log p(x_j | x_<j)`` over its targets ``j >= 1``: every real token when a BOS exists,
every token but the first otherwise.

Sequences longer than the model's context C are scored with a sliding window: the first window
covers ``x[0:C]``; each next one scores the following ``stride`` targets and takes the C - stride
tokens before them as context, so every target is predicted once, from at least C - stride
tokens of history (or from the sequence start). ``stride = C // 2`` by default.

Windows of all sequences are sorted by length and batched with right padding; padding sits
after every real token, so under causal attention it changes no real position's logits, and
its targets are masked out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# (input ids [B, T], attention mask [B, T] bool) -> logits [B, T, V]
ForwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Window:
    sample: int
    start: int  # first input position
    end: int  # one past the last input position
    first_target: int  # first position whose token is scored (>= start + 1)


def plan_windows(
    length: int, context: int, stride: int | None = None
) -> list[tuple[int, int, int]]:
    """(start, end, first_target) windows covering targets 1..length-1 exactly once."""
    if context < 2:
        raise ValueError(f"context must be >= 2 tokens, got {context}")
    stride = stride or max(1, context // 2)
    stride = min(stride, context - 1)
    if length < 2:
        return []
    end = min(length, context)
    out = [(0, end, 1)]
    while end < length:
        first = end
        end = min(length, first + stride)
        out.append((max(0, end - context), end, first))
    return out


@torch.no_grad()
def score_sequences(
    sequences: Sequence[Sequence[int]],
    forward: ForwardFn,
    context: int,
    pad_id: int,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    stride: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence (NLL sum in nats, number of scored targets), float64 and int64 arrays."""
    windows = [
        Window(i, a, b, f)
        for i, seq in enumerate(sequences)
        for a, b, f in plan_windows(len(seq), context, stride)
    ]
    windows.sort(key=lambda w: w.end - w.start)
    nll = np.zeros(len(sequences), dtype=np.float64)
    count = np.zeros(len(sequences), dtype=np.int64)
    for lo in range(0, len(windows), batch_size):
        chunk = windows[lo : lo + batch_size]
        width = max(w.end - w.start for w in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.bool)
        scored = torch.zeros((len(chunk), width), dtype=torch.bool)
        for r, w in enumerate(chunk):
            n = w.end - w.start
            ids[r, :n] = torch.as_tensor(sequences[w.sample][w.start : w.end], dtype=torch.long)
            attn[r, :n] = True
            scored[r, w.first_target - w.start : n] = True
        ids, attn = ids.to(device), attn.to(device)
        logits = forward(ids, attn)[:, :-1].float()
        mask = scored[:, 1:].to(logits.device)
        # padding may be an id the model never predicts (the project LM pads with its BOS)
        targets = torch.where(mask, ids[:, 1:], torch.zeros_like(ids[:, 1:]))
        flat = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        )
        token_nll = flat.view(targets.shape)
        sums = (token_nll.double() * mask).sum(1).cpu().numpy()
        ns = mask.sum(1).cpu().numpy()
        for r, w in enumerate(chunk):
            nll[w.sample] += sums[r]
            count[w.sample] += ns[r]
    return nll, count
