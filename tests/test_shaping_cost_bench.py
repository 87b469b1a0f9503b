"""benchmarks/shaping_cost.py: compasses of several sizes are timed in the same rounds."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "shaping_cost.py"


def load():
    spec = importlib.util.spec_from_file_location("shaping_cost", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_times_each_compass_size_against_blind(tmp_path, monkeypatch):
    mod = load()
    argv = ["x", "--vocab", "8", "--seq-len", "8", "--batch", "2", "--dim", "16", "--layers", "1"]
    argv += ["--compasses", "ar", "oracle", "--candidates", "2", "--steps", "1", "--warmup", "0"]
    monkeypatch.setattr(
        sys, "argv", [*argv, "--compass-shapes", "8x1", "12x2x3", "--out", str(tmp_path)]
    )
    mod.main()
    r = json.loads((tmp_path / "shaping_cost.json").read_text())
    arms = [row["arm"] for row in r["rows"]]
    assert arms[0] == "blind" and arms[-1] == "oracle K=2" and len(arms) == 4
    assert arms[1].startswith("ar (8x1x2, ") and arms[2].startswith("ar (12x2x3, ")
    small, large = r["compass_parameters"]
    assert small < large  # two real sizes, not one model timed twice
    assert r["rows"][0]["ratio_to_blind"] == 1.0
    assert all(len(row["sec_per_step_runs"]) == 5 for row in r["rows"])
    assert "heun / probs target" in r["target"]  # the default recipe, named as it is
    assert "| ar (12x2x3" in (tmp_path / "shaping_cost.md").read_text()


@pytest.mark.parametrize("text", ["56", "56x2x3", "ax2", "0x2"])
def test_bad_compass_shapes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        load().parse_shape(text)
