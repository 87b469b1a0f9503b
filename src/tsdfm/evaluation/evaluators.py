"""Evaluators: models that turn samples into per-sample NLL sums and token counts.

The interface is deliberately small, ``score(texts, ids) -> Scores(nll_sum[N], tokens[N])``,
so the harness can pool ``exp(sum nll_sum / sum tokens)`` the same way for every judge.

* Text evaluators (:class:`ProjectEvaluator`, :class:`HFEvaluator`) read only the decoded text
  (special tokens already dropped) and re-tokenize it with *their own* tokenizer: a
  perplexity is only meaningful in the evaluator's units. The first token is conditioned on the
  evaluator's begin-of-sequence token, when it has one, so every real token is scored.
* :class:`TruthEvaluator` scores ids under the known ``markov`` chain (exact likelihood).

Models load lazily on the first ``score`` call and are kept: one load per evaluation run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from tsdfm.errors import TsdfmError
from tsdfm.evaluation.metrics import pooled_ppl
from tsdfm.evaluation.scoring import score_sequences


class Scores(NamedTuple):
    nll_sum: np.ndarray  # nats, float64 [N]
    tokens: np.ndarray  # scored tokens, int64 [N]

    @property
    def gen_ppl(self) -> float:
        return pooled_ppl(self.nll_sum, self.tokens)


class Evaluator(ABC):
    name: str

    @abstractmethod
    def score(self, texts: list[str], ids: np.ndarray | None = None) -> Scores: ...

    def row_metrics(self, ids: np.ndarray) -> dict[str, Any]:
        """Extra per-row metrics (the truth evaluator's truth_nll, entropy_rate, ngram_tv)."""
        return {}


class _TextEvaluator(Evaluator):
    """Shared text path: tokenize, prepend BOS, score with a sliding window in batches."""

    def __init__(self, name: str, batch_size: int, device: str):
        self.name, self.batch_size, self.device = name, batch_size, device
        self._loaded = False

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, BOS first when the evaluator has one."""

    @abstractmethod
    def _forward(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor: ...

    context: int
    pad_id: int

    def score(self, texts: list[str], ids: np.ndarray | None = None) -> Scores:
        self._ensure_loaded()
        seqs = self.encode(list(texts))
        nll, n = score_sequences(
            seqs, self._forward, self.context, self.pad_id, self.batch_size, self.device
        )
        return Scores(nll, n)


class ProjectEvaluator(_TextEvaluator):
    """A tsdfm :class:`~tsdfm.models.CausalLM` directory with its own tokenizer."""

    def __init__(self, name: str, model_dir: str | Path, batch_size: int = 32, device="cpu"):
        super().__init__(name, batch_size, device)
        self.model_dir = Path(model_dir)

    def _load(self) -> None:
        from tsdfm.models import CausalLM, load_pretrained

        model, tok = load_pretrained(self.model_dir)
        if not isinstance(model, CausalLM):
            raise TsdfmError(
                f"evaluator {self.name}: {self.model_dir} holds a {model.model_type!r} model; "
                "an evaluator must be a causal LM (tsdfm train causal --role evaluator-small)"
            )
        if tok is None:
            raise TsdfmError(f"evaluator {self.name}: {self.model_dir} has no tokenizer/ directory")
        self.model, self.tokenizer = model.to(self.device).eval(), tok
        # positions 0..max_len exist (BOS + max_len tokens); see CausalLM.__init__
        self.context = model.config.max_len + 1
        self.pad_id = model.bos_id

    def encode(self, texts: list[str]) -> list[list[int]]:
        self._ensure_loaded()
        return [[self.model.bos_id, *ids] for ids in self.tokenizer.encode_batch(texts)]

    def _forward(self, ids, attn):
        return self.model(ids)


class HFEvaluator(_TextEvaluator):
    """Any Hugging Face causal LM in a local directory (optionally a GGUF file in it).

    ``bos``: ``"auto"`` uses the tokenizer's BOS token, else its EOS token (GPT-2's
    ``<|endoftext|>`` is both: the document separator it was trained with), else none; a token
    string picks that token; ``None`` scores from the second token on.
    """

    def __init__(
        self,
        name: str,
        directory: str | Path,
        gguf_file: str | None = None,
        bos: str | None = "auto",
        batch_size: int = 8,
        device: str = "cpu",
        max_context: int = 2048,
    ):
        super().__init__(name, batch_size, device)
        self.directory, self.gguf_file, self.bos = Path(directory), gguf_file, bos
        self.max_context = max_context

    def _load(self) -> None:
        from tsdfm.evaluation.hf import context_length, load_hf_causal_lm

        self.model, self.tokenizer = load_hf_causal_lm(self.directory, self.gguf_file, self.device)
        tok = self.tokenizer
        if self.bos == "auto":
            self.bos_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        elif self.bos is None:
            self.bos_id = None
        else:
            self.bos_id = tok.convert_tokens_to_ids(self.bos)
            if self.bos_id is None or tok.convert_ids_to_tokens(self.bos_id) != self.bos:
                raise TsdfmError(f"evaluator {self.name}: its tokenizer has no token {self.bos!r}")
        self.context = context_length(self.model, self.max_context)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def encode(self, texts: list[str]) -> list[list[int]]:
        self._ensure_loaded()
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        prefix = [] if self.bos_id is None else [int(self.bos_id)]
        return [prefix + list(row) for row in ids]

    def _forward(self, ids, attn):
        return self.model(input_ids=ids, attention_mask=attn.long()).logits


class TruthEvaluator(Evaluator):
    """Exact NLL under the ``markov`` chain: ``-log p(x) = -log pi(x_1..x_k) - sum log P``."""

    def __init__(self, chain, name: str = "truth"):
        self.chain, self.name = chain, name

    def score(self, texts: list[str], ids: np.ndarray | None = None) -> Scores:
        if ids is None:
            raise TsdfmError("the truth evaluator scores token ids; the samples file has none")
        arr = np.asarray(ids, dtype=np.int64)
        self._check(arr)
        nll = -self.chain.log_prob(arr)
        return Scores(nll.astype(np.float64), np.full(len(arr), arr.shape[1], dtype=np.int64))

    def _check(self, arr: np.ndarray) -> None:
        if arr.size and (arr.min() < 0 or arr.max() >= self.chain.vocab_size):
            raise TsdfmError(
                f"samples contain ids outside the chain's {self.chain.vocab_size} symbols "
                "(unfinished [MASK] tokens or a model from another corpus)"
            )

    def row_metrics(self, ids: np.ndarray) -> dict[str, Any]:
        from tsdfm.evaluation.truth import truth_metrics

        k = self.chain.order
        m = truth_metrics(self.chain, ids, orders=sorted({2, 3, k + 1}))
        keys = ("truth_nll", "truth_nll_se", "expected_nll", "entropy_rate")
        return {
            **{key: m[key] for key in keys},
            "ngram_tv": m["ngram_tv"],
            "ngram_tv_floor": m["ngram_tv_floor"],
            "ngram_order": k + 1,
        }
