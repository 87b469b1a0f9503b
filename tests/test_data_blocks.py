"""Packing and the memory-mapped block reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsdfm.data import TokenBlocks
from tsdfm.data.blocks import block_dtype, pack_documents, write_blocks
from tsdfm.errors import TsdfmError


def test_pack_documents():
    blocks = pack_documents([[1, 2, 3], [4], [5, 6]], seq_len=3, eos_id=9)
    # stream: 1 2 3 9 4 9 5 6 9 -> three full blocks, nothing dropped
    np.testing.assert_array_equal(blocks, [[1, 2, 3], [9, 4, 9], [5, 6, 9]])
    assert pack_documents([[1, 2]], seq_len=4, eos_id=0).shape == (0, 4)
    assert pack_documents([], seq_len=4, eos_id=0).shape == (0, 4)


def test_block_dtype():
    assert block_dtype(8195) == np.dtype("<u2")
    assert block_dtype(65536) == np.dtype("<u2")
    assert block_dtype(65537) == np.dtype("<u4")


def test_write_and_read(tmp_path):
    blocks = np.arange(40).reshape(10, 4)
    dtype = write_blocks(tmp_path / "x.bin", blocks, vocab_size=100)
    assert dtype == np.dtype("<u2")
    assert (tmp_path / "x.bin").stat().st_size == 40 * 2
    tb = TokenBlocks(tmp_path / "x.bin", 4, "uint16")
    assert len(tb) == 10 and tb.seq_len == 4 and tb.num_tokens == 40
    assert tb[2].dtype == np.int64
    np.testing.assert_array_equal(tb[2], [8, 9, 10, 11])
    np.testing.assert_array_equal(tb[-1], [36, 37, 38, 39])
    np.testing.assert_array_equal(tb[1:3], blocks[1:3])
    np.testing.assert_array_equal(tb[np.array([5, 0, 5])], blocks[[5, 0, 5]])
    np.testing.assert_array_equal(tb[torch.tensor([1, 2])], blocks[[1, 2]])
    with pytest.raises(IndexError):
        tb[10]


def test_wide_ids_use_uint32(tmp_path):
    blocks = np.array([[70000, 1]])
    assert write_blocks(tmp_path / "w.bin", blocks) == np.dtype("<u4")
    np.testing.assert_array_equal(TokenBlocks(tmp_path / "w.bin", 2, "uint32")[0], [70000, 1])


def test_bad_files(tmp_path):
    with pytest.raises(TsdfmError, match="prepare"):
        TokenBlocks(tmp_path / "none.bin", 4, "uint16")
    (tmp_path / "odd.bin").write_bytes(b"\0" * 6)
    with pytest.raises(TsdfmError, match="multiple"):
        TokenBlocks(tmp_path / "odd.bin", 4, "uint16")
    (tmp_path / "empty.bin").write_bytes(b"")
    assert len(TokenBlocks(tmp_path / "empty.bin", 4, "uint16")) == 0
