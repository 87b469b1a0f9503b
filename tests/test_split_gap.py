"""studies/split_gap.py: the validation column is the trainer's own validation loss."""

import json

import pytest
import yaml

from tsdfm.cli import main

TINY = {
    "name": "gap",
    "data": {
        "corpus": "markov",
        "seq_len": 16,
        "markov": {
            "vocab_size": 8,
            "alpha": 0.2,
            "num_train": 256,
            "num_valid": 64,
            "num_test": 32,
        },
    },
    "teacher": {
        "model": {"dim": 32, "n_layers": 1, "n_heads": 2},
        "train": {"steps": 4, "batch_size": 8, "eval_every": 4, "eval_batches": 3, "ckpt_every": 4},
    },
}


def test_valid_column_reproduces_the_runs_validation_and_train_differs(tmp_path, load_script):
    cfg = tmp_path / "gap.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    data, run = tmp_path / "data", tmp_path / "teacher"
    assert main(["data", "prepare", "--config", str(cfg), "--out", str(data), "--no-progress"]) == 0
    args = ["train", "teacher", "--config", str(cfg), "--data", str(data), "--out", str(run)]
    assert main([*args, "--no-progress"]) == 0
    shipped = json.loads((run / "summary.json").read_text())["final_val_loss"]
    gap_mod = load_script("split_gap")
    text = gap_mod.main(
        ["--data", str(data), "--model", f"t={run}", "--out", str(tmp_path / "g.md")]
    )
    row = text.splitlines()[2].split("|")
    (train, n_train), (valid, n_valid) = (cell.split() for cell in row[2:4])
    assert float(valid) == pytest.approx(shipped, abs=1e-4)  # same weights, batches and noise
    assert abs(float(train) - float(valid)) > 1e-4  # the training split: other blocks
    assert n_train == n_valid == "(24)"  # 3 batches of 8 blocks per split
    gap, se = row[4].split("±")
    assert float(gap) == pytest.approx(float(train) - float(valid), abs=2e-4) and float(se) > 0
    more = gap_mod.main(["--data", str(data), "--model", f"t={run}", "--passes", "4"])
    row = more.splitlines()[2].split("|")
    assert row[2].split()[1] == row[3].split()[1] == "(96)"  # 4 passes of 24 blocks each
    assert (tmp_path / "g.md").read_text().startswith("| model |")


def test_a_malformed_model_is_refused_before_anything_loads(tmp_path, load_script, capsys):
    gap = load_script("split_gap")
    with pytest.raises(SystemExit):
        gap.main(["--data", str(tmp_path / "none"), "--model", "no-equals-sign"])
    assert "expected NAME=DIR" in capsys.readouterr().err
