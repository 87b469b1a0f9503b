"""Property: whatever numbers reach ``draw_samples``, it samples or raises TsdfmError.

The sampler core's own checks are covered in test_flow_sampler.py; this drives the user-facing
entry point (the one behind ``tsdfm sample``) with arbitrary counts, lengths and filters,
including the values a script can produce by accident: 0, negatives, floats, inf and NaN.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tsdfm.data.tokenizer import Tokenizer
from tsdfm.errors import TsdfmError
from tsdfm.generation import draw_samples
from tsdfm.models import Denoiser, DenoiserConfig

V, L = 6, 5


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    cfg = DenoiserConfig(vocab_size=V + 1, num_classes=V, max_len=L, dim=16, n_layers=1, n_heads=2)
    return Denoiser(cfg).eval(), Tokenizer.identity(V)


# Counts stay small when valid: a huge num or steps is a legitimate (slow) request, not bad input.
ODD = st.sampled_from([0, -1, 1.5, math.inf, -math.inf, math.nan, True, None])
HUGE = st.just(10**30)
COUNT = st.integers(1, 4) | ODD
FRACTION = st.floats(allow_nan=True, allow_infinity=True) | st.none()


@settings(max_examples=150, deadline=None)
@given(
    steps=COUNT,
    num=COUNT,
    batch_size=COUNT,
    seq_len=st.none() | st.integers(-2, L + 2) | ODD | HUGE,
    top_k=st.none() | st.integers(-2, V + 2) | ODD | HUGE,
    top_p=FRACTION,
    temperature=FRACTION | st.just(1.0),
    seed=st.integers(0, 2**31),
)
def test_draw_samples_validates_every_input(
    model_and_tokenizer, steps, num, batch_size, seq_len, top_k, top_p, temperature, seed
):
    try:
        s = draw_samples(
            None,
            steps=steps,
            num=num,
            seed=seed,
            batch_size=batch_size,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            seq_len=seq_len,
            progress=False,
            model_and_tokenizer=model_and_tokenizer,
        )
    except TsdfmError:
        return
    assert s.ids.shape == (num, seq_len or L)
    assert int(s.ids.min()) >= 0 and int(s.ids.max()) < V


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"num": 0}, "num must be >= 1"),
        ({"seq_len": 0}, "seq_len must be >= 1"),
        ({"seq_len": L + 1}, f"at most {L}"),
        ({"top_k": math.inf}, "top_k"),
        ({"top_p": math.nan}, "top_p"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
    ],
)
def test_bad_sampling_inputs_are_named(model_and_tokenizer, kw, message):
    with pytest.raises(TsdfmError, match=message):
        draw_samples(None, progress=False, model_and_tokenizer=model_and_tokenizer, **kw)


@pytest.mark.slow
def test_a_compiled_model_draws_the_same_samples(model_and_tokenizer):
    """``draw_samples`` takes a ``torch.compile`` wrapper (benchmarks/speed.py --variants compile)
    and draws what the eager module draws: same uniforms, same positions, same landing tokens."""
    from tsdfm.inference import maybe_compile

    model, tok = model_and_tokenizer
    kw = dict(steps=3, num=4, seed=5, batch_size=4, progress=False, cache=False)
    eager = draw_samples(None, model_and_tokenizer=(model, tok), **kw)
    compiled = draw_samples(None, model_and_tokenizer=(maybe_compile(model, True), tok), **kw)
    assert torch.equal(eager.ids, compiled.ids)
