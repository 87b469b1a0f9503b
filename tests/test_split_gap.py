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
    gap = load_script("split_gap")
    text = gap.main(["--data", str(data), "--model", f"t={run}", "--out", str(tmp_path / "g.md")])
    row = text.splitlines()[2].split("|")
    train, valid = float(row[2]), float(row[3])
    assert valid == pytest.approx(shipped, abs=1e-4)  # same weights, batches and noise
    assert abs(train - valid) > 1e-4  # the training split is really a different set of blocks
    assert row[5].strip() == "24"  # 3 batches of 8 blocks per split
    assert (tmp_path / "g.md").read_text().startswith("| model |")


def test_a_malformed_model_is_refused_before_anything_loads(tmp_path, load_script, capsys):
    gap = load_script("split_gap")
    with pytest.raises(SystemExit):
        gap.main(["--data", str(tmp_path / "none"), "--model", "no-equals-sign"])
    assert "expected NAME=DIR" in capsys.readouterr().err
