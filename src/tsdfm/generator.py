"""The user-facing generation API: load a model directory once, then generate text from it.

``Generator`` wraps any tsdfm model directory (teacher, student or the causal AR baseline) with
its tokenizer, so users build on plain strings instead of ids, flow sources and samplers.
Conditioning needs no special training: positions the user fixes (a prefix prompt, a suffix,
or the given tokens of an infilling template) are *clamped* in the real sampler, which never
changes them, and the denoiser fills in the rest around them. For the mask source the free
positions start as ``[MASK]``, for the uniform source as uniform noise, exactly as in
unconditional sampling. A causal LM can only continue a prefix, so it refuses infilling.

:func:`show_steps` prints one sequence while it crystallises, a frame per step in which
something changed (subsampled to at most ``max_frames``), for users who want to see how a
few-step model commits to its tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsdfm.data.tokenizer import MASK
from tsdfm.errors import TsdfmError

Callback = Callable[[int, Tensor], None]


def load_named_mask_denoiser(spec: str, why: str):
    """``NAME=DIR`` (a study script's ``--model``) -> ``(name, dir, model in eval mode)``; the
    model must be a mask-source denoiser, else ``why`` says what needs one."""
    from tsdfm.models import Denoiser, load_pretrained

    name, sep, path = spec.partition("=")
    if not sep:
        raise TsdfmError(f"--model takes NAME=DIR, got {spec!r}")
    model, _ = load_pretrained(resolve_model_dir(path), expect=Denoiser)
    if model.config.source != "mask":
        raise TsdfmError(f"{path}: {why}")
    return name, path, model.eval()


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a run directory holding one in ``model/``; clear error otherwise."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    if not path.exists():
        raise TsdfmError(f"model directory not found: {path}; pass e.g. runs/tiny/teacher/model")
    raise TsdfmError(
        f"{path} is not a tsdfm model directory (no config.json in it or in {path / 'model'}); "
        "pass a directory written by training, e.g. runs/tiny/teacher or runs/tiny/teacher/model"
    )


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TsdfmError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class Generator:
    """Text generation from one tsdfm model; build with :meth:`from_pretrained`."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str = ""):
        from tsdfm.models import CausalLM

        if tokenizer is None:
            raise TsdfmError(f"{name or 'the model'} has no tokenizer/ directory; cannot decode")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.is_causal = isinstance(model, CausalLM)
        self.last_stats: dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "auto") -> Generator:
        """Load a model directory (or a run directory holding ``model/``) onto ``device``:
        ``auto`` (the GPU when CUDA is available, else the CPU), ``cpu``, ``cuda`` or any torch
        device string such as ``cuda:1``."""
        from tsdfm.distributed import as_device
        from tsdfm.models import load_pretrained

        device = str(as_device(device))
        model_dir = resolve_model_dir(directory)
        model, tok = load_pretrained(model_dir, map_location=device)
        return cls(model.to(device), tok, str(model_dir))

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_id

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    # ------------------------------------------------------------------ templates
    def _encode_fixed(self, text: str, what: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if self.mask_id in ids:
            raise TsdfmError(f"{what} contains {MASK}; use infill= to mark positions to generate")
        return ids

    def _infill_ids(self, infill: str | Sequence[int | None]) -> list[int | None]:
        """Template string (one ``[MASK]`` = one generated token) or ids with None for free.

        A generated BPE token carries its own leading space, so spaces just before a
        ``[MASK]`` are dropped: ``"The cat [MASK] on"`` fixes "The cat" and " on".
        """
        if not isinstance(infill, str):
            out = [None if i is None else int(i) for i in infill]
            bad = [i for i in out if i is not None and not 0 <= i < self.mask_id]
            if bad:
                raise TsdfmError(f"infill ids {bad[:5]} are outside [0, {self.mask_id})")
            return out
        pieces = infill.split(MASK)
        if len(pieces) == 1:
            raise TsdfmError(f"infill template has no {MASK}; use prompt= to continue a text")
        out: list[int | None] = []
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            out += self._encode_fixed(piece if last else piece.rstrip(" "), "infill text")
            if not last:
                out.append(None)
        return out

    def template(
        self,
        seq_len: int,
        prompt: str | None = None,
        suffix: str | None = None,
        infill: str | Sequence[int | None] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(ids [L], fixed [L] bool)``: what the user fixed, ``[MASK]`` elsewhere."""
        if prompt is not None and infill is not None:
            raise TsdfmError("give either prompt= (a prefix) or infill= (a template), not both")
        head: list[int | None] = []
        if prompt is not None:
            head = list(self._encode_fixed(prompt, "prompt"))
        elif infill is not None:
            head = self._infill_ids(infill)
        tail = self._encode_fixed(suffix, "suffix") if suffix is not None else []
        if len(head) + len(tail) > seq_len:
            what = "prompt" if prompt is not None else "infill template"
            room = self.config.max_len
            fix = f"raise seq_len (up to {room})" if seq_len < room else f"the model's L is {room}"
            raise TsdfmError(
                f"{what} ({len(head)} tokens) plus suffix ({len(tail)}) is longer than the "
                f"sequence length {seq_len}; shorten it ({fix})"
            )
        ids = torch.full((seq_len,), self.mask_id, dtype=torch.long)
        fixed = torch.zeros(seq_len, dtype=torch.bool)
        for pos, tok in [
            *enumerate(head),
            *((seq_len - len(tail) + i, t) for i, t in enumerate(tail)),
        ]:
            if tok is not None:
                ids[pos], fixed[pos] = tok, True
        return ids, fixed

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        n: int = 1,
        steps: int = 8,
        seed: int = 0,
        prompt: str | None = None,
        suffix: str | None = None,
        infill: str | Sequence[int | None] | None = None,
        return_ids: bool = False,
        top_k: int | None = None,
        top_p: float | None = None,
        seq_len: int | None = None,
        callback: Callback | None = None,
        cache: bool = True,
        batch_size: int = 64,
    ) -> list[str] | tuple[list[str], Tensor]:
        """``n`` texts of ``seq_len`` tokens (default: the model's length L).

        ``callback(step, ids)`` sees each batch after every sampler step; for a causal LM the
        steps are the generated tokens, replayed after sampling (its state after k tokens is
        exactly the first k tokens). ``steps`` is ignored by a causal LM (one step per token).
        """
        _check_positive("n", n)
        _check_positive("steps", steps)
        _check_positive("batch_size", batch_size)
        length = _check_positive("seq_len", seq_len) if seq_len is not None else None
        length = length or self.config.max_len
        if length > self.config.max_len:
            raise TsdfmError(
                f"seq_len {length} is larger than the model's length {self.config.max_len}; "
                f"use a seq_len of at most {self.config.max_len} (or leave it unset)"
            )
        ids, fixed = self.template(length, prompt, suffix, infill)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        run = self._causal_batch if self.is_causal else self._dfm_batch
        if self.is_causal:
            self._check_causal(fixed, top_k, top_p)
        chunks, t0 = [], time.perf_counter()
        nfe_nominal = nfe_actual = 0
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            out, nom, act = run(b, ids, fixed, steps, gen, top_k, top_p, cache, callback)
            chunks.append(out.cpu())
            nfe_nominal, nfe_actual = nfe_nominal + nom, nfe_actual + act
        n_batches = len(chunks)
        self.last_stats = {
            "seconds": time.perf_counter() - t0,
            "nfe_nominal": nfe_nominal // n_batches,
            "nfe_actual": nfe_actual / n_batches,
            "fixed_positions": int(fixed.sum()),
        }
        out_ids = torch.cat(chunks)
        texts = self.tokenizer.decode_batch(out_ids.tolist())
        return (texts, out_ids) if return_ids else texts

    def _check_causal(self, fixed: Tensor, top_k: int | None, top_p: float | None) -> None:
        prefix_len = int(fixed.sum())
        if not bool(fixed[:prefix_len].all()):
            raise TsdfmError(
                "a causal LM can only continue a prefix prompt; infill= and suffix= need a DFM "
                "model (teacher or student)"
            )
        if top_k is not None or top_p is not None:
            raise TsdfmError("top_k/top_p are not supported for the causal LM; leave them unset")

    def _dfm_batch(self, b, ids, fixed, steps, gen, top_k, top_p, cache, callback):
        from tsdfm.flow import sample_source
        from tsdfm.generation import sample_denoiser

        cfg = self.config
        x0 = sample_source((b, ids.numel()), cfg.source, cfg.mask_id, cfg.num_classes, gen)
        x0 = x0.to(self.device)
        clamp = fixed.to(self.device).expand(b, -1)
        x0 = torch.where(clamp, ids.to(self.device).expand(b, -1), x0)
        res = sample_denoiser(
            self.model,
            x0,
            steps,
            gen,
            cache=cache,
            top_k=top_k,
            top_p=top_p,
            clamp=clamp.contiguous() if bool(fixed.any()) else None,
            callback=callback,
        )
        return res.ids, res.nfe_nominal, res.nfe_actual

    def _causal_batch(self, b, ids, fixed, steps, gen, top_k, top_p, cache, callback):
        length, prefix_len = ids.numel(), int(fixed.sum())
        prefix = ids[:prefix_len].to(self.device).expand(b, -1) if prefix_len else None
        out = self.model.generate(b, length, gen, use_cache=True, prefix=prefix)
        if callback is not None:
            for k in range(1, length - prefix_len + 1):
                frame = out.clone()
                frame[:, prefix_len + k :] = self.mask_id
                callback(k, frame)
        return out, length - prefix_len, length - prefix_len

    # ------------------------------------------------------------------ display
    def render(self, ids: Sequence[int] | Tensor, mask_text: str = "_") -> str:
        """Decode one sequence, showing each still-masked position as ``mask_text``."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        parts, run = [], []
        for i in ids:
            if i == self.mask_id:
                if run:
                    parts.append(self.tokenizer.decode(run))
                    run = []
                parts.append(mask_text)
            else:
                run.append(i)
        if run:
            parts.append(self.tokenizer.decode(run))
        return (" " if self.tokenizer.kind == "identity" else "").join(parts)


def show_steps(
    g: Generator,
    n: int = 1,
    steps: int = 8,
    *,
    max_frames: int = 32,
    write: Callable[[str], None] = print,
    mask_text: str = "_",
    **kwargs: Any,
) -> list[str]:
    """Generate ``n`` texts and ``write`` the first one as it crystallises; returns the texts.

    Frames are written live: the start (what the user fixed, ``mask_text`` elsewhere; not for
    the uniform source, whose start is noise), then at most one frame per ``steps / max_frames``
    steps and only if the sequence changed since the last one, then the final sequence.
    ``kwargs`` go to :meth:`Generator.generate`.
    """
    _check_positive("max_frames", max_frames)
    _check_positive("steps", steps)
    length = kwargs.get("seq_len") or g.config.max_len
    start, fixed = g.template(
        length, kwargs.get("prompt"), kwargs.get("suffix"), kwargs.get("infill")
    )
    total = length - int(fixed.sum()) if g.is_causal else steps  # a causal LM: one step per token
    width = len(str(total))
    state: dict[str, Any] = {"last": None, "due": 0.0}

    def frame(k: int, ids: Tensor) -> None:
        if state.get("done"):  # later batches: the first sample's frames are already shown
            return
        state["done"] = k == total
        row = ids[0].tolist()
        if (row == state["last"] and k != total) or (k < state["due"] and k != total):
            return
        masked = sum(i == g.mask_id for i in row)
        write(f"step {k:>{width}}/{total} ({masked} masked): {g.render(row, mask_text)}")
        state["last"], state["due"] = row, k + total / max_frames

    if g.is_causal or g.config.source == "mask":
        frame(0, start[None])
    return g.generate(n, steps, callback=frame, **kwargs)
