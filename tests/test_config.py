"""Config parsing: unknown keys with did-you-mean, type errors, overrides, round trip."""

import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsdfm.config import ExperimentConfig, from_dict, load_config, save_config, to_dict
from tsdfm.errors import TsdfmError


def test_defaults_validate():
    ExperimentConfig().validate()


def test_override_and_roundtrip(tmp_path):
    cfg = load_config(None, ["teacher.train.steps=7", "flow.source=uniform", "sample.top_p=0.9"])
    assert cfg.teacher.train.steps == 7 and cfg.flow.source == "uniform" and cfg.sample.top_p == 0.9
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads ``3e-4`` as a string; a float setting takes it as the number it means."""
    cfg = load_config(None, ["teacher.train.lr=3e-4", "student.shaping.tau=1E1"])
    assert cfg.teacher.train.lr == 3e-4 and cfg.student.shaping.tau == 10.0
    f = tmp_path / "lr.yaml"
    f.write_text("teacher:\n  train:\n    lr: 5e-4\n")
    assert load_config(f).teacher.train.lr == 5e-4
    with pytest.raises(TsdfmError, match="finite"):
        load_config(None, ["teacher.train.lr=nan "])
    with pytest.raises(TsdfmError, match="must be an integer"):
        load_config(None, ["teacher.train.steps=1e3"])


def test_unknown_key_did_you_mean():
    with pytest.raises(TsdfmError, match="did you mean 'steps'"):
        load_config(None, ["teacher.train.stepz=3"])
    with pytest.raises(TsdfmError, match="did you mean 'teacher'"):
        from_dict(ExperimentConfig, {"teachr": {}})


@pytest.mark.parametrize(
    "override, message",
    [
        ("teacher.train.steps=0", "steps must be > 0"),
        ("flow.source=gaussian", "source must be one of"),
        ("teacher.train.lr=abc", "must be a number"),
        ("teacher.model.dim=30", "divisible"),
        ("sample.top_p=1.5", "top_p"),
        ("teacher.train.steps=1.5", "integer"),
        ("evaluation.evaluators=[gpt2]", "evaluators must be distinct names"),
        ("evaluation.evaluators=[ar-small, ar-small]", "evaluators must be distinct names"),
        ("evaluation.evaluators=[]", "evaluators is empty"),
    ],
)
def test_bad_values(override, message):
    with pytest.raises(TsdfmError, match=message):
        load_config(None, [override])


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(TsdfmError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [1, 2\n")
    with pytest.raises(TsdfmError, match="not valid YAML"):
        load_config(bad)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=5), max_size=4
    )
)
def test_random_mappings_never_crash_uncleanly(tree):
    """Any mapping either builds a valid config or raises TsdfmError -- never anything else."""
    try:
        from_dict(ExperimentConfig, {"teacher": {"train": tree}}).validate()
    except TsdfmError:
        pass


def _leaf_keys(cls=ExperimentConfig, prefix=""):
    """Every dotted key of the config tree with its type, so random overrides hit real fields."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_keys(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


LEAF_TYPES = _leaf_keys()
LEAF_KEYS = sorted(LEAF_TYPES)
ODD_VALUES = (
    [".inf", "-.inf", ".nan", "1e400", "-1", "0", "1.5", "null", "~", "[1, 2]", "{a: 1}",
     "true", "2020-01-01", "!!python/object:os.system", "'x'", "&a [*a]", "", "0x10", "1_000",
     "1" + "0" * 400, "1" * 5000]
)  # fmt: skip
_YAMLISH = st.sampled_from(ODD_VALUES)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(LEAF_KEYS) | st.text(max_size=12),
            _YAMLISH | st.text(max_size=8) | st.integers().map(str) | st.floats().map(repr),
        ).map(lambda kv: f"{kv[0]}={kv[1]}")
        | st.text(max_size=10),
        max_size=4,
    )
)
def test_random_override_strings_raise_only_tsdfm_errors(overrides):
    """Whatever a user types after the command, the answer is a config or a TsdfmError."""
    try:
        load_config(None, overrides)
    except TsdfmError:
        pass


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key", ["teacher.train.steps", "teacher.train.lr", "student.shaping.tau"])
def test_non_finite_numbers_are_refused(key, value):
    with pytest.raises(TsdfmError, match="finite"):
        load_config(None, [f"{key}={value}"])


def test_every_key_with_every_odd_value_raises_only_tsdfm_errors():
    """The exhaustive companion of the property test: each field type against each odd value."""
    one_key_per_type = {repr(tp): key for key, tp in LEAF_TYPES.items()}
    assert len(one_key_per_type) >= 8  # int, float, str, bool, optionals, lists
    for key in one_key_per_type.values():
        for value in ODD_VALUES:
            try:
                load_config(None, [f"{key}={value}"])
            except TsdfmError:
                pass
