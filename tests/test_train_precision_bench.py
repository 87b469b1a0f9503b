"""benchmarks/train_precision.py: a tiny run writes the JSON and markdown it promises."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_precision.py"


def test_tiny_run_writes_both_arms(tmp_path, monkeypatch):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"seq_len": 16, "vocab_size": 256},
                "teacher": {"model": {"dim": 32, "n_layers": 1, "n_heads": 2},
                            "train": {"batch_size": 4}},
            }
        )
    )  # fmt: skip
    spec = importlib.util.spec_from_file_location("train_precision", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["x", "--config", str(cfg), "--threads", "1", "--steps", "1", "--warmup", "0"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path)])
    mod.main()
    r = json.loads((tmp_path / "train_precision.json").read_text())
    assert set(r["sec_per_step"]) == {"fp32", "bf16"} and r["repeats"] == 5
    assert all(len(v) == 5 and min(v) > 0 for v in r["sec_per_step_runs"].values())
    assert r["ratio_bf16_to_fp32"] > 0 and r["batch"] == 4 and r["vocab"] == 256
    fp32, bf16 = r["loss_same_batch"]["fp32"], r["loss_same_batch"]["bf16"]
    # same initial weights, same batch: bf16 moves the loss by rounding only (about log(256) here)
    assert math.isfinite(fp32) and abs(bf16 - fp32) < 0.05 * fp32
    assert "bf16 / fp32 time per step" in (tmp_path / "train_precision.md").read_text()
