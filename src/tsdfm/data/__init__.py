"""Data: corpora, tokenizers, packed token blocks, and the exact ``markov`` benchmark.

``prepare_data(spec, out_dir)`` is the stage; later stages open its output with
``load_prepared(out_dir)``. See DESIGN.md sections 6 and 9.
"""

from tsdfm.data.blocks import TokenBlocks
from tsdfm.data.corpora import Document, load_documents, split_of
from tsdfm.data.markov import MarkovChain, chain_floor_tv
from tsdfm.data.prepare import default_cache_dir, prepare_data
from tsdfm.data.prepared import PreparedData, load_prepared
from tsdfm.data.spec import DataSpec, MarkovSpec
from tsdfm.data.tokenizer import Tokenizer

__all__ = [
    "DataSpec",
    "Document",
    "MarkovChain",
    "MarkovSpec",
    "PreparedData",
    "TokenBlocks",
    "Tokenizer",
    "chain_floor_tv",
    "default_cache_dir",
    "load_documents",
    "load_prepared",
    "prepare_data",
    "split_of",
]
