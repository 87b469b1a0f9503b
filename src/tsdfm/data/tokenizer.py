"""Tokenizers with the id layout every model relies on.

Layout: real tokens take ids ``[0, n_real)``, special tokens follow, and ``[MASK]`` is always
the LAST id, ``mask_id == vocab_size - 1``. The denoiser never predicts ``[MASK]``, so it has
``num_classes == mask_id`` outputs and its logits index real (and other special) ids directly.

Two kinds:

- ``bpe``: byte-level BPE trained with the HuggingFace ``tokenizers`` library on the train
  split, then ``[EOS]``, ``[PAD]``, ``[MASK]`` appended in that order. Byte-level means every
  string encodes (no unknown token) and decoding returns it exactly.
- ``identity``: for the ``markov`` corpus; symbol i is the text token ``"i"``, so samples read
  as space-separated ids and the chain's probabilities apply to ids unchanged. Only
  ``[MASK]`` (id V) is added.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tsdfm.artifacts import atomic_write_bytes, atomic_write_json, sha256_json
from tsdfm.errors import TsdfmError

MASK = "[MASK]"
EOS = "[EOS]"
PAD = "[PAD]"
BPE_SPECIALS = (EOS, PAD, MASK)  # order fixes their ids: n_real, n_real + 1, n_real + 2
META_FILE = "tokenizer_meta.json"
HF_FILE = "tokenizer.json"
_FORMAT = 1
_MIN_BPE_VOCAB = 256  # the byte alphabet alone


def _id_list(ids: Any) -> list[int]:
    """Token ids as a list of ints from a list, numpy array or torch tensor."""
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu()
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        raise TsdfmError("decode expects a sequence of token ids, got a single int")
    return [int(i) for i in ids]


class Tokenizer:
    """A ``bpe`` or ``identity`` tokenizer; build with :meth:`train_bpe`, :meth:`identity`
    or :meth:`load`, not the constructor."""

    def __init__(self, kind: str, n_real: int, hf: Any = None):
        if kind not in ("bpe", "identity"):
            raise TsdfmError(f"unknown tokenizer kind {kind!r}; expected 'bpe' or 'identity'")
        self._kind = kind
        self._n_real = int(n_real)
        self._hf = hf
        if hf is not None:
            # Text that happens to contain "[MASK]" must encode as characters, never as the
            # special id (this switch is not stored in tokenizer.json, so set it every time).
            hf.encode_special_tokens = True
        specials = BPE_SPECIALS if kind == "bpe" else (MASK,)
        self._special_ids = {name: self._n_real + i for i, name in enumerate(specials)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def train_bpe(
        cls, texts: Iterable[str], vocab_size: int = 8192, *, show_progress: bool = False
    ) -> Tokenizer:
        """Train byte-level BPE with `vocab_size` real tokens (specials come on top).

        On a small corpus the trainer may run out of merges and return fewer tokens; then
        n_real is what it produced, the layout rule (specials last, MASK last) still holds.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < _MIN_BPE_VOCAB:
            raise TsdfmError(
                f"BPE vocab_size must be >= {_MIN_BPE_VOCAB} (the byte alphabet), got "
                f"{vocab_size}; raise data.vocab_size"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        hf.train_from_iterator(texts, trainer)
        n_real = hf.get_vocab_size(with_added_tokens=False)
        hf.add_special_tokens(list(BPE_SPECIALS))
        tok = cls("bpe", n_real, hf)
        tok._check_layout()
        return tok

    @classmethod
    def from_existing(cls, source: str | Path) -> Tokenizer:
        """An existing byte-level BPE (e.g. GPT-2's) with ``[EOS]``, ``[PAD]``, ``[MASK]`` added.

        ``source``: a ``tokenizer.json`` file, a directory holding one (or ``vocab.json`` +
        ``merges.txt``), or, when no such path exists, a Hugging Face hub name such as ``gpt2``
        (needs network access). The real tokens keep their ids, so a model can be compared with
        others that use the same tokenizer; the three specials follow them (GPT-2's own
        ``<|endoftext|>`` stays an ordinary token that text never produces, since special tokens
        in text are encoded as characters).
        """
        hf = _load_existing(source)
        hf.no_truncation()
        hf.no_padding()
        n_real = hf.get_vocab_size(with_added_tokens=False)
        extra = hf.get_vocab_size(with_added_tokens=True) - n_real
        if extra:
            raise TsdfmError(
                f"the tokenizer at {source} has {extra} added token(s) outside its BPE vocabulary; "
                "tsdfm needs real tokens first and its own specials last: use a tokenizer whose "
                "added tokens are part of the vocabulary (as GPT-2's <|endoftext|> is)"
            )
        hf.add_special_tokens(list(BPE_SPECIALS))
        tok = cls("bpe", n_real, hf)
        tok._check_layout()
        return tok

    @classmethod
    def identity(cls, V: int) -> Tokenizer:
        """Ids 0..V-1 are the symbols themselves, plus [MASK] = V."""
        if V < 1:
            raise TsdfmError(f"identity tokenizer needs V >= 1 symbols, got {V}")
        return cls("identity", V)

    def _check_layout(self) -> None:
        """Fail loudly if the HF tokenizer's ids break the layout the models assume."""
        hf = self._hf
        if hf.get_vocab_size(with_added_tokens=False) != self._n_real:
            raise TsdfmError(
                f"tokenizer has {hf.get_vocab_size(with_added_tokens=False)} real tokens but "
                f"its metadata says {self._n_real}; the tokenizer files are inconsistent, "
                "re-run `tsdfm data prepare`"
            )
        for name, expected in self._special_ids.items():
            if hf.token_to_id(name) != expected:
                raise TsdfmError(
                    f"special token {name} has id {hf.token_to_id(name)}, expected {expected} "
                    "(real tokens first, [MASK] last); re-run `tsdfm data prepare`"
                )

    # ------------------------------------------------------------------ layout
    @property
    def kind(self) -> str:
        return self._kind

    @property
    def n_real(self) -> int:
        """Number of real (non-special) tokens; they have ids [0, n_real)."""
        return self._n_real

    @property
    def vocab_size(self) -> int:
        """All ids, specials included; [MASK] is vocab_size - 1."""
        return self._n_real + len(self._special_ids)

    @property
    def mask_id(self) -> int:
        return self._special_ids[MASK]

    @property
    def num_classes(self) -> int:
        """Denoiser output size: every id except [MASK], which is last."""
        return self.mask_id

    @property
    def eos_id(self) -> int | None:
        return self._special_ids.get(EOS)

    @property
    def pad_id(self) -> int | None:
        return self._special_ids.get(PAD)

    @property
    def special_ids(self) -> set[int]:
        return set(self._special_ids.values())

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        if self._kind == "bpe":
            return self._hf.encode(text).ids
        return [self._identity_id(tok) for tok in text.split()]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts; for BPE the library spreads the work over threads."""
        if self._kind == "bpe":
            return [enc.ids for enc in self._hf.encode_batch(list(texts))]
        return [self.encode(t) for t in texts]

    def _identity_id(self, tok: str) -> int:
        if tok == MASK:
            return self.mask_id
        try:
            i = int(tok)
        except ValueError:
            raise TsdfmError(
                f"identity tokenizer cannot encode {tok!r}: text must be space-separated "
                f"integers in [0, {self._n_real}) or {MASK}"
            ) from None
        if not 0 <= i < self._n_real:
            raise TsdfmError(f"identity token {i} is outside [0, {self._n_real})")
        return i

    def decode(self, ids: Any, skip_special: bool = True) -> str:
        """Text for one id sequence; special tokens are dropped unless skip_special=False."""
        ids = _id_list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TsdfmError(
                f"token ids {bad[:5]} are outside this tokenizer's range [0, {self.vocab_size}); "
                "the model and tokenizer do not match"
            )
        if self._kind == "bpe":
            return self._hf.decode(ids, skip_special_tokens=skip_special)
        specials = {v: k for k, v in self._special_ids.items()}
        parts = [specials.get(i, str(i)) for i in ids if not (skip_special and i in specials)]
        return " ".join(parts)

    def decode_batch(self, list_of_ids: Any, skip_special: bool = True) -> list[str]:
        if hasattr(list_of_ids, "detach"):
            list_of_ids = list_of_ids.detach().cpu()
        return [self.decode(ids, skip_special) for ids in list_of_ids]

    # ------------------------------------------------------------------ persistence
    def _meta(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "kind": self._kind,
            "n_real": self._n_real,
            "vocab_size": self.vocab_size,
            "num_classes": self.num_classes,
            "mask_id": self.mask_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "specials": dict(self._special_ids),
        }

    def fingerprint(self) -> str:
        """SHA-256 of the layout plus the canonical (sorted-key) JSON of the BPE model:
        equal for equal tokenizers, so a checkpoint can refuse a mismatched tokenizer."""
        body: dict[str, Any] = {"meta": self._meta()}
        if self._hf is not None:
            body["model"] = json.loads(self._hf.to_str())
        return sha256_json(body)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._hf is not None:
            atomic_write_bytes(directory / HF_FILE, self._hf.to_str().encode("utf-8"))
        atomic_write_json(directory / META_FILE, self._meta())

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        directory = Path(directory)
        meta_path = directory / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            kind, n_real = meta["kind"], int(meta["n_real"])
        except FileNotFoundError:
            raise TsdfmError(
                f"no tokenizer at {meta_path}; run `tsdfm data prepare` to create it"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TsdfmError(
                f"tokenizer metadata {meta_path} is corrupt ({e}); re-run `tsdfm data prepare`"
            ) from None
        if kind == "identity":
            tok = cls("identity", n_real)
        elif kind == "bpe":
            tok = cls("bpe", n_real, _load_hf(directory / HF_FILE))
            tok._check_layout()
        else:
            raise TsdfmError(f"{meta_path} names unknown tokenizer kind {kind!r}")
        if tok.vocab_size != meta.get("vocab_size") or tok.mask_id != meta.get("mask_id"):
            raise TsdfmError(
                f"{meta_path} disagrees with the tokenizer it describes; re-run "
                "`tsdfm data prepare`"
            )
        return tok

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self._kind!r}, vocab_size={self.vocab_size})"


def _load_existing(source: str | Path) -> Any:
    """A HF ``tokenizers`` object from a local file/directory, else from the hub by name."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    path = Path(source).expanduser()
    fix = (
        "put GPT-2's tokenizer.json (or vocab.json and merges.txt) in a local directory and set "
        "data.tokenizer_path to it (e.g. from huggingface.co/openai-community/gpt2)"
    )
    try:
        if path.is_dir() and (path / HF_FILE).is_file():
            path = path / HF_FILE
        if path.is_file():
            return HFTokenizer.from_file(str(path))
        if path.is_dir() and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            hf = HFTokenizer(
                models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
            )
            hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            hf.decoder = decoders.ByteLevel()
            return hf
    except Exception as e:  # the library raises plain Exception subclasses on bad files
        raise TsdfmError(f"cannot read the tokenizer at {source} ({e}); {fix}") from None
    if path.exists():
        raise TsdfmError(f"{source} holds no tokenizer.json nor vocab.json + merges.txt; {fix}")
    if "/" in str(source) and str(source).startswith((".", "/", "~")):
        raise TsdfmError(f"tokenizer path {source} does not exist; {fix}")
    try:  # not a local path: a hub name such as "gpt2"
        return HFTokenizer.from_pretrained(str(source))
    except Exception as e:
        raise TsdfmError(
            f"data.tokenizer_path={source!r} is not a local path and could not be fetched from the "
            f"Hugging Face hub ({type(e).__name__}: {e}); {fix}"
        ) from None


def _load_hf(path: Path) -> Any:
    from tokenizers import Tokenizer as HFTokenizer

    if not path.is_file():
        raise TsdfmError(f"no tokenizer file {path}; run `tsdfm data prepare` to create it")
    try:
        return HFTokenizer.from_file(str(path))
    except Exception as e:  # the library raises plain Exception subclasses on bad JSON
        raise TsdfmError(
            f"tokenizer file {path} is corrupt ({e}); re-run `tsdfm data prepare`"
        ) from None
