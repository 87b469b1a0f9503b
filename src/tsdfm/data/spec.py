"""What data to prepare: plain dataclasses the config system wraps.

Only the fields that determine the data count when comparing two specs (see
:meth:`DataSpec.determining`): for ``markov`` the chain and sample counts and seq_len, for
real text the corpus, seq_len, BPE size and split fractions. Changing an irrelevant default
(say the markov settings while preparing wiki text) does not invalidate prepared data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tsdfm.errors import TsdfmError

MARKOV = "markov"
_MAX_BPE_VOCAB = 2**32 - 4  # ids must fit uint32 with three specials on top
TOKENIZER_SAMPLE_CHARS = 100_000_000  # ~100 MB of text: the default BPE training sample


@dataclass
class MarkovSpec:
    """The synthetic ``markov`` corpus (DESIGN.md section 9): chain parameters and the
    number of sequences per split; each sequence is one block of ``seq_len`` tokens."""

    vocab_size: int = 64
    order: int = 1
    alpha: float = 0.05
    eps: float = 0.01
    seed: int = 0
    num_train: int = 100_000
    num_valid: int = 2_048
    num_test: int = 4_096

    def validate(self, seq_len: int) -> None:
        from tsdfm.data.markov import check_chain_params

        check_chain_params(self.vocab_size, self.order, self.alpha, self.eps, self.seed)
        for name in ("num_train", "num_valid", "num_test"):
            if getattr(self, name) < 1:
                raise TsdfmError(f"data.markov.{name} must be >= 1, got {getattr(self, name)}")
        if seq_len <= self.order:
            raise TsdfmError(
                f"data.seq_len ({seq_len}) must exceed data.markov.order ({self.order}) so each "
                "sequence contains transitions"
            )


@dataclass
class DataSpec:
    """A corpus (built-in name, ``markov``, or a local path) and how to tokenize and split it.

    ``vocab_size`` is the number of real BPE tokens; ``[EOS]``, ``[PAD]``, ``[MASK]`` come on
    top. It is ignored for ``markov``, whose vocabulary is ``markov.vocab_size``.
    """

    corpus: str = "wiki-summaries"
    seq_len: int = 128
    vocab_size: int = 8192
    valid_fraction: float = 0.02
    test_fraction: float = 0.02
    markov: MarkovSpec = field(default_factory=MarkovSpec)
    # An existing byte-level BPE instead of training one (then vocab_size is ignored): a
    # tokenizer.json, a directory with one (or vocab.json + merges.txt), or a hub name (online).
    tokenizer_path: str | None = None
    # BPE is trained on the first this-many characters of training-split documents, in corpus
    # order (whole documents; at least one), so its time and memory do not grow with the corpus.
    tokenizer_sample_chars: int = TOKENIZER_SAMPLE_CHARS

    @property
    def is_markov(self) -> bool:
        return self.corpus == MARKOV

    def validate(self) -> None:
        """Raise TsdfmError naming the first out-of-range value."""
        if not isinstance(self.corpus, str) or not self.corpus:
            raise TsdfmError("data.corpus must name a corpus (e.g. wiki-summaries) or a path")
        if self.seq_len < 2:
            raise TsdfmError(f"data.seq_len must be >= 2, got {self.seq_len}")
        if self.is_markov:
            if self.tokenizer_path is not None:
                raise TsdfmError(
                    "data.tokenizer_path is for text corpora; the markov corpus has its own "
                    "identity tokenizer: remove data.tokenizer_path"
                )
            self.markov.validate(self.seq_len)
            return
        if self.tokenizer_path is not None and not self.tokenizer_path.strip():
            raise TsdfmError("data.tokenizer_path is empty: name a tokenizer or remove the key")
        if self.tokenizer_path is None and not 256 <= self.vocab_size <= _MAX_BPE_VOCAB:
            raise TsdfmError(
                f"data.vocab_size must be >= 256 (the byte alphabet of byte-level BPE), got "
                f"{self.vocab_size}"
            )
        if not isinstance(self.tokenizer_sample_chars, int) or self.tokenizer_sample_chars < 1:
            raise TsdfmError(
                f"data.tokenizer_sample_chars must be a positive integer (characters of text "
                f"the tokenizer is trained on), got {self.tokenizer_sample_chars!r}"
            )
        v, t = self.valid_fraction, self.test_fraction
        if v <= 0 or t <= 0 or v + t >= 1:
            raise TsdfmError(
                f"data.valid_fraction ({v}) and data.test_fraction ({t}) must be > 0 with a "
                "sum below 1, leaving documents for training"
            )

    def determining(self) -> dict[str, Any]:
        """The fields that determine the prepared data (compared on re-runs)."""
        if self.is_markov:
            return {"corpus": self.corpus, "seq_len": self.seq_len, "markov": asdict(self.markov)}
        keys = ("corpus", "seq_len", "vocab_size", "valid_fraction", "test_fraction")
        out = {k: getattr(self, k) for k in keys}
        if self.tokenizer_path is not None:  # absent otherwise: older manifests stay equal
            out["tokenizer_path"] = self.tokenizer_path
            del out["vocab_size"]
        elif self.tokenizer_sample_chars != TOKENIZER_SAMPLE_CHARS:  # same rule
            out["tokenizer_sample_chars"] = self.tokenizer_sample_chars
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing ones default."""
        d = dict(d)
        markov = d.pop("markov", {}) or {}
        _reject_unknown(cls, d, "data")
        _reject_unknown(MarkovSpec, markov, "data.markov")
        return cls(**d, markov=MarkovSpec(**markov))


def _reject_unknown(cls: type, d: dict[str, Any], prefix: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise TsdfmError(
            f"unknown {prefix} keys {unknown}; valid keys are {sorted(known - {'markov'})}"
        )


def diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, e.g. ``markov.order``."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff_keys(va, vb, f"{prefix}{key}."))
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out
