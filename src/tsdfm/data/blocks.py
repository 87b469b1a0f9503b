"""Fixed-length token blocks on disk: the training input of every model.

Documents are concatenated, each followed by ``[EOS]``, and cut into non-overlapping blocks
of exactly ``seq_len`` tokens; the last partial block is dropped so every block is full and
no ``[PAD]`` is needed. Blocks are stored as one raw little-endian array (uint16 when every
id fits, else uint32) and read back through a memory map, so a split larger than RAM costs
only the pages a batch touches.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tsdfm.artifacts import atomic_open
from tsdfm.errors import TsdfmError


def block_dtype(vocab_size: int) -> np.dtype:
    """Smallest little-endian unsigned dtype holding ids ``[0, vocab_size)``."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def pack_documents(token_lists: Iterable[list[int]], seq_len: int, eos_id: int) -> np.ndarray:
    """[N, seq_len] int64 blocks of the documents joined as ``doc_1 EOS doc_2 EOS ...``,
    with N = floor(total tokens / seq_len)."""
    if seq_len < 1:
        raise TsdfmError(f"seq_len must be >= 1, got {seq_len}")
    eos = np.array([eos_id], dtype=np.int64)
    parts = []
    for tokens in token_lists:
        parts.append(np.asarray(tokens, dtype=np.int64))
        parts.append(eos)
    if not parts:
        return np.zeros((0, seq_len), dtype=np.int64)
    stream = np.concatenate(parts)
    n = stream.size // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def write_blocks(path: Path, blocks: np.ndarray, vocab_size: int | None = None) -> np.dtype:
    """Write `blocks` [N, L] as raw little-endian ids, atomically; returns the dtype used.

    The dtype follows `vocab_size` when given (so every split of one dataset agrees), else
    the largest id present.
    """
    blocks = np.asarray(blocks)
    if blocks.ndim != 2:
        raise TsdfmError(f"blocks must be shaped [N, seq_len], got {blocks.shape}")
    if blocks.size and blocks.min() < 0:
        raise TsdfmError("blocks hold negative token ids; they cannot be stored")
    top = int(blocks.max()) + 1 if blocks.size else 1
    dtype = block_dtype(max(top, vocab_size or 0))
    with atomic_open(Path(path)) as f:
        np.ascontiguousarray(blocks, dtype=dtype).tofile(f)
    return dtype


class TokenBlocks:
    """Read-only memory-mapped view of a blocks file; indexing returns int64 copies.

    ``blocks[i]`` -> [L]; ``blocks[a:b]`` or ``blocks[index_array]`` -> [b, L].
    """

    def __init__(self, path: Path, seq_len: int, dtype: Any):
        self.path = Path(path)
        self.seq_len = int(seq_len)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if not self.path.is_file():
            raise TsdfmError(f"no token blocks at {self.path}; run `tsdfm data prepare` first")
        row = self.seq_len * self.dtype.itemsize
        size = self.path.stat().st_size
        if size % row:
            raise TsdfmError(
                f"{self.path} has {size} bytes, not a multiple of seq_len {self.seq_len} x "
                f"{self.dtype.itemsize} bytes: it is truncated or was written with another "
                "seq_len; re-run `tsdfm data prepare`"
            )
        n = size // row
        if n == 0:
            self._data = np.zeros((0, self.seq_len), dtype=self.dtype)
        else:
            self._data = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(n, self.seq_len))

    def __len__(self) -> int:
        return self._data.shape[0]

    @property
    def num_tokens(self) -> int:
        return len(self) * self.seq_len

    def __getitem__(self, idx: Any) -> np.ndarray:
        if hasattr(idx, "detach"):  # torch index tensor
            idx = idx.detach().cpu().numpy()
        return np.array(self._data[idx], dtype=np.int64)

    def __repr__(self) -> str:
        return f"TokenBlocks({str(self.path)!r}, blocks={len(self)}, seq_len={self.seq_len})"
