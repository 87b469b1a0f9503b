"""Draw samples from any tsdfm model directory and write them with their provenance.

``samples.jsonl`` holds one object per sample (``text``, ``ids``); the sidecar
``samples.meta.json`` says what produced them: model path, steps, seed, source, sampler
settings, float64 draws, timing and forward-pass counts (nominal and actual).
"""

from __future__ import annotations

import json
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tsdfm import __version__
from tsdfm.artifacts import atomic_write_json, atomic_write_text, now_iso, read_json
from tsdfm.errors import TsdfmError
from tsdfm.flow import make_scheduler, sample, sample_source
from tsdfm.models import CausalLM, Denoiser, load_pretrained


@dataclass
class SampleSet:
    ids: torch.Tensor
    texts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def _check_count(name: str, value) -> None:
    """Counts come from users and scripts: anything but an integer >= 1 is refused up front."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise TsdfmError(f"{name} must be >= 1 (a whole number), got {value!r}")


def can_cache(model: Denoiser, cache: bool = True) -> bool:
    """Forward caching is exact only for a mask-source model that ignores t and dt."""
    c = model.config
    return cache and c.source == "mask" and not c.time_cond and not c.dt_cond


def sample_denoiser(model: Denoiser, x0, steps: int, generator, cache: bool = True, **kw):
    """The exact sampler with the model's own flow settings (source, scheduler, mask id)."""
    c = model.config
    return sample(
        model,
        x0,
        steps,
        make_scheduler(c.scheduler, c.exponent),
        c.source,
        c.mask_id,
        generator,
        cache=can_cache(model, cache),
        **kw,
    )


def draw_samples(
    model_dir: str | Path,
    steps: int = 1024,
    num: int = 16,
    seed: int = 0,
    batch_size: int = 64,
    cache: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    seq_len: int | None = None,
    progress: bool = True,
    model_and_tokenizer: tuple | None = None,
) -> SampleSet:
    """Unconditional samples; the denoiser uses the exact finite-step sampler, a causal LM its
    KV cache. ``cache`` (forward caching) only applies to time-independent mask-source models."""
    for name, value in (("steps", steps), ("num", num), ("batch_size", batch_size)):
        _check_count(name, value)
    if seq_len is not None:
        _check_count("seq_len", seq_len)
    model, tok = model_and_tokenizer or load_pretrained(model_dir)
    if tok is None:
        raise TsdfmError(f"{model_dir} has no tokenizer/ directory; cannot decode samples")
    cfg = model.config
    length = seq_len or cfg.max_len
    if length > cfg.max_len:
        raise TsdfmError(
            f"seq_len {length} is larger than the model's max length {cfg.max_len}; use a "
            f"seq_len of at most {cfg.max_len} (or leave it unset)"
        )
    gen = torch.Generator().manual_seed(seed)
    chunks, nfe_nom, nfe_act, row_fwd = [], 0, 0, 0.0
    t0 = time.perf_counter()
    is_causal = isinstance(model, CausalLM)
    use_cache = False
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        if is_causal:
            chunks.append(model.generate(b, length, gen, use_cache=True))
            nfe_nom += length
            nfe_act += length
            row_fwd += length * b
            continue
        assert isinstance(model, Denoiser)
        use_cache = can_cache(model, cache)
        x0 = sample_source((b, length), cfg.source, cfg.mask_id, cfg.num_classes, gen)
        res = sample_denoiser(
            model,
            x0,
            steps,
            gen,
            cache=cache,
            top_k=top_k,
            top_p=top_p,
            progress=progress and num <= batch_size,
        )
        chunks.append(res.ids)
        nfe_nom += res.nfe_nominal
        nfe_act += res.nfe_actual
        row_fwd += res.nfe_per_sample * b
    seconds = time.perf_counter() - t0
    ids = torch.cat(chunks)
    n_batches = -(-num // batch_size)
    meta = {
        "model": str(model_dir),
        "model_type": model.model_type,
        "method": "ar" if is_causal else cfg.extra.get("method", "teacher"),
        "candidates": None if is_causal else cfg.extra.get("candidates"),
        "compass": None if is_causal else cfg.extra.get("compass"),
        "label": None if is_causal else cfg.extra.get("label"),
        "source": None if is_causal else cfg.source,
        "steps": length if is_causal else steps,
        "num_samples": num,
        "seq_len": length,
        "seed": seed,
        "batch_size": batch_size,
        "sampler": {
            "kind": "autoregressive-kv-cache" if is_causal else "dfm-exact-jump",
            "forward_cache": use_cache,
            "top_k": top_k,
            "top_p": top_p,
            "draw_precision": "float64",
        },
        "tokenizer_fingerprint": tok.fingerprint(),
        "nfe_nominal": nfe_nom // n_batches,
        "nfe_actual": nfe_act / n_batches,
        "nfe_per_sample": row_fwd / num,
        "seconds": round(seconds, 4),
        "sec_per_sample": seconds / num,
        "tokens_per_second": num * length / max(seconds, 1e-9),
        "threads": torch.get_num_threads(),
        "created": now_iso(),
        "tsdfm_version": __version__,
    }
    return SampleSet(ids=ids, texts=tok.decode_batch(ids.tolist()), meta=meta)


def meta_path(samples_path: Path) -> Path:
    samples_path = Path(samples_path)
    return samples_path.with_name(samples_path.name.removesuffix(".jsonl") + ".meta.json")


def write_samples(path: str | Path, samples: SampleSet) -> Path:
    path = Path(path)
    lines = [
        json.dumps({"index": i, "text": t, "ids": row}, ensure_ascii=False)
        for i, (t, row) in enumerate(zip(samples.texts, samples.ids.tolist(), strict=True))
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    atomic_write_json(meta_path(path), samples.meta)
    return path


def read_samples(path: str | Path) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """(ids [N, L], texts, provenance); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TsdfmError(f"samples file not found: {path}")
    ids, texts = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            ids.append(obj["ids"])
            texts.append(obj.get("text", ""))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TsdfmError(f"{path}:{n} is not a sample record with 'ids' ({e})") from e
    if not ids:
        raise TsdfmError(f"{path} holds no samples")
    if len({len(r) for r in ids}) != 1:
        raise TsdfmError(f"{path}: samples have different lengths")
    mpath = meta_path(path)
    meta = read_json(mpath, "samples metadata") if mpath.is_file() else {}
    return torch.tensor(ids, dtype=torch.long), texts, meta
