"""Config parsing: unknown keys with did-you-mean, type errors, overrides, round trip."""

import pytest
from hypothesis import given
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
