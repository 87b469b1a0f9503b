"""The uncached-teacher timing: it stops after its window and scales per-step time honestly."""

import pytest
import torch

from tsdfm.errors import TsdfmError
from tsdfm.evaluation.timing import time_uncached
from tsdfm.models import Denoiser, DenoiserConfig


def tiny(source="mask"):
    torch.manual_seed(0)
    cfg = DenoiserConfig(
        vocab_size=9,
        num_classes=8,
        max_len=8,
        dim=16,
        n_layers=1,
        n_heads=2,
        source=source,
        time_cond=source != "mask",
    )
    return Denoiser(cfg)


def test_window_is_scaled_to_all_steps(monkeypatch):
    calls = []
    model = tiny()
    real = model.forward

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(model, "forward", counting)
    t = time_uncached(model, steps=100_000, batch_size=4, timed_steps=3, warmup=2)
    assert len(calls) == 5  # 2 warm-up + 3 timed forward passes, not 100,000
    assert (t.timed_steps, t.warmup_steps, t.steps, t.batch_size) == (3, 2, 100_000, 4)
    assert t.sec_per_sample > 0 and "scaled" in t.as_meta()["method"]


def test_short_schedules_and_bad_arguments():
    t = time_uncached(tiny("uniform"), steps=1, batch_size=2)
    assert (t.timed_steps, t.warmup_steps) == (1, 0)
    with pytest.raises(TsdfmError):
        time_uncached(tiny(), steps=0, batch_size=2)
