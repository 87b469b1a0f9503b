"""Draw samples from any tsdfm model directory and write them with their provenance.

``samples.jsonl`` holds one object per sample (``text``, ``ids``); the sidecar
``samples.meta.json`` says what produced them: model path, steps, seed, source, sampler
settings, float64 draws, timing and forward-pass counts (nominal and actual).

Under torchrun the batches are dealt round-robin to the ranks and gathered back in batch order,
so every rank returns the same :class:`SampleSet` (rank 0 writes it). One generator threaded
through all batches would make batch k depend on every earlier batch, which no rank but one
could reproduce; distributed sampling therefore seeds each batch on its own (``seed_per_batch``:
batch 0 from ``seed`` itself, batch k from ``derive_seed(seed, 3, k)``). The samples then do not
depend on the number of processes, and one process with ``seed_per_batch=True`` draws exactly
the same ids as any torchrun world size (on the same device type).
"""

from __future__ import annotations

import json
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tsdfm import __version__, distributed
from tsdfm.artifacts import atomic_write_json, atomic_write_text, now_iso, read_json
from tsdfm.distributed import derive_seed, make_generator
from tsdfm.errors import TsdfmError
from tsdfm.flow import filter_logits, make_scheduler, sample, sample_source
from tsdfm.flow.sampler import supports_positions
from tsdfm.models import CausalLM, Denoiser, load_pretrained
from tsdfm.sample_files import iter_records, meta_path, record_text, resolve_samples

__all__ = ["SampleSet", "draw_samples", "meta_path", "read_samples", "write_samples"]


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
    *,
    device: str | torch.device | None = "auto",
    seed_per_batch: bool | None = None,
    temperature: float = 1.0,
    head_at_jumps: bool | None = None,
) -> SampleSet:
    """Unconditional samples; the denoiser uses the exact finite-step sampler, a causal LM its
    KV cache. ``cache`` (forward caching) only applies to time-independent mask-source models.

    ``temperature`` divides the denoiser's logits before every jump (``tsdfm.flow.filtering``);
    a causal LM refuses anything but 1. ``device``: where to sample; ``"auto"`` (default) is
    this process's GPU when CUDA is available, else the CPU (under torchrun, this rank's GPU),
    so a GPU machine never samples on its CPU by accident; ``None`` keeps the model where it
    is (a model passed in ``model_and_tokenizer`` is moved in place otherwise).
    ``seed_per_batch`` (default: on under torchrun, off otherwise) seeds every batch
    separately, see the module docstring. ``head_at_jumps``: see :func:`tsdfm.flow.sample`
    (default on: the model's last block and head run only where positions move).
    """
    for name, value in (("steps", steps), ("num", num), ("batch_size", batch_size)):
        _check_count(name, value)
    if seq_len is not None:
        _check_count("seq_len", seq_len)
    filter_logits(torch.zeros(1), temperature=temperature)  # bad values fail before loading
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
    ctx = distributed.DistContext()
    named = isinstance(device, str) and device in distributed.DEVICES  # auto | cpu | cuda
    if distributed.launched_world_size() > 1:
        kind = "auto" if device is None else device if named else torch.device(device).type
        ctx = distributed.setup(kind)
        device = ctx.device if device is None or named else device
    elif device is not None:
        device = distributed.as_device(device)
    if device is not None:
        model = model.to(device)
    dev = next(model.parameters()).device
    per_batch = ctx.enabled if seed_per_batch is None else bool(seed_per_batch)
    gen = make_generator(seed, dev)
    inner = getattr(model, "_orig_mod", model)  # a torch.compile wrapper samples as its module
    is_causal = isinstance(inner, CausalLM)
    if is_causal and temperature != 1.0:
        raise TsdfmError(f"{model_dir} is a causal LM: sampling temperature applies to denoisers")
    use_cache = False if is_causal else can_cache(model, cache)
    at_jumps = not use_cache and head_at_jumps is not False and supports_positions(model)
    starts = list(range(0, num, batch_size))
    mine = [k for k in range(len(starts)) if k % ctx.world_size == ctx.rank]
    show = progress and num <= batch_size and ctx.is_main
    sampler_kw = dict(
        cache=cache, top_k=top_k, top_p=top_p, temperature=temperature, head_at_jumps=head_at_jumps
    )
    results = []  # (batch index, ids on the CPU, nominal nfe, actual nfe, rows forwarded)
    t0 = time.perf_counter()
    for k in mine:
        b = min(batch_size, num - starts[k])
        if per_batch:
            gen = make_generator(seed if k == 0 else derive_seed(seed, 3, k), dev)
        if is_causal:
            ids = model.generate(b, length, gen, use_cache=True)
            results.append((k, ids.cpu(), length, length, float(length * b)))
            continue
        assert isinstance(inner, Denoiser)
        x0 = sample_source((b, length), cfg.source, cfg.mask_id, cfg.num_classes, gen, dev)
        res = sample_denoiser(model, x0, steps, gen, progress=show, **sampler_kw)
        results.append((k, res.ids.cpu(), res.nfe_nominal, res.nfe_actual, res.nfe_per_sample * b))
    if ctx.enabled:
        results = sorted(
            (r for part in distributed.all_gather_object(results) for r in part),
            key=lambda r: r[0],
        )
    seconds = time.perf_counter() - t0
    ids = torch.cat([r[1] for r in results])
    nfe_nom = sum(r[2] for r in results)
    nfe_act = sum(r[3] for r in results)
    row_fwd = sum(r[4] for r in results)
    n_batches = len(starts)
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
            "temperature": temperature,
            "draw_precision": "float64",
            "head_at_jumps": None if is_causal else at_jumps,
        },
        "tokenizer_fingerprint": tok.fingerprint(),
        "nfe_nominal": nfe_nom // n_batches,
        "nfe_actual": nfe_act / n_batches,
        "nfe_per_sample": row_fwd / num,
        "seconds": round(seconds, 4),
        "sec_per_sample": seconds / num,
        "tokens_per_second": num * length / max(seconds, 1e-9),
        "threads": torch.get_num_threads(),
        "device": _device_name(dev),  # the timings above are only comparable on one device
        "created": now_iso(),
        "tsdfm_version": __version__,
    }
    if per_batch or ctx.enabled:
        meta["seed_per_batch"] = per_batch
        meta["world_size"] = ctx.world_size
    return SampleSet(ids=ids, texts=tok.decode_batch(ids.tolist()), meta=meta)


def _device_name(dev: torch.device) -> str:
    """``cpu`` or e.g. ``cuda:0 (NVIDIA H200)``."""
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)


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
    """(ids [N, L], texts, provenance) from ``.jsonl`` or ``.jsonl.gz`` (ids-only records too,
    see :mod:`tsdfm.sample_files`); errors name the file and line."""
    path = resolve_samples(path)
    ids, texts = [], []
    for n, obj in iter_records(path):
        try:
            ids.append(obj["ids"])
            texts.append(record_text(obj))
        except (KeyError, TypeError) as e:
            raise TsdfmError(f"{path}:{n} is not a sample record with 'ids' ({e})") from e
    if not ids:
        raise TsdfmError(f"{path} holds no samples")
    if len({len(r) for r in ids}) != 1:
        raise TsdfmError(f"{path}: samples have different lengths")
    try:
        tensor = torch.tensor(ids, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise TsdfmError(f"{path}: 'ids' must be lists of token ids ({e})") from None
    mpath = meta_path(path)
    meta = read_json(mpath, "samples metadata") if mpath.is_file() else {}
    return tensor, texts, meta
