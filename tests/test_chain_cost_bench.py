"""benchmarks/chain_cost.py: a tiny run writes the JSON and markdown it promises."""

import importlib.util
import json
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "chain_cost.py"


def test_tiny_run_times_product_and_chain(tmp_path, monkeypatch):
    cfg = tmp_path / "m.yaml"
    markov = {"vocab_size": 8, "order": 1, "alpha": 0.5, "eps": 0.01, "seed": 0}
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"corpus": "markov", "seq_len": 8, "markov": markov},
                "teacher": {"model": {"dim": 16, "n_layers": 1, "n_heads": 2}},
                "student": {"teacher_steps": 8, "target": "heun", "target_space": "probs"},
            }
        )
    )
    spec = importlib.util.spec_from_file_location("chain_cost", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["x", "--config", str(cfg), "--codes", "2", "4", "--batch", "2", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--warmup", "0", "--out", str(tmp_path)])
    mod.main()
    r = json.loads((tmp_path / "chain_cost.json").read_text())
    assert [row["arm"] for row in r["rows"]] == ["product", "chain K=2", "chain K=4"]
    assert r["rows"][0]["ratio_to_product"] == 1.0 and r["repeats"] == 5
    assert all(len(row["sec_per_step_runs"]) == 5 and row["sec_per_step"] > 0 for row in r["rows"])
    assert r["vocab"] == 8 and r["seq_len"] == 8 and r["data_weight"] == 1.0
    assert "| chain K=4 |" in (tmp_path / "chain_cost.md").read_text()
    rec = r["recursion"]
    assert [row["codes"] for row in rec] == [2, 4] and all(
        row["bit_identical_gradients"] for row in rec
    )


def test_text_rows_come_from_a_prepared_corpus(tmp_path, monkeypatch, prepare_texts):
    """``--data DIR``: the rows, vocabulary and length of a prepared text corpus (a text config
    without it is refused), and the head's logits size per arm."""
    import pytest

    words = "the cat sat on a mat while birds sang over green hills near old towns".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(60)) for i in range(40)]
    data = prepare_texts(texts)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"corpus": "wiki-summaries", "seq_len": 24, "vocab_size": 300},
                "teacher": {"model": {"dim": 16, "n_layers": 1, "n_heads": 2}},
                "student": {"teacher_steps": 8, "target": "heun", "target_space": "probs"},
            }
        )
    )
    spec = importlib.util.spec_from_file_location("chain_cost", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["x", "--config", str(cfg), "--codes", "2", "--batch", "2", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--warmup", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="pass --data"):
        mod.main()
    monkeypatch.setattr(
        sys, "argv", [*argv, "--warmup", "0", "--out", str(tmp_path), "--data", str(data)]
    )
    mod.main()
    r = json.loads((tmp_path / "chain_cost.json").read_text())
    from tsdfm.data import load_prepared

    classes = load_prepared(data).tokenizer.num_classes
    assert r["vocab"] == classes > 64 and r["seq_len"] == 24 and r["data"] == str(data)
    sizes = [row["head_logits_gb"] for row in r["rows"]]
    assert sizes == [2 * 24 * k * classes * 4 / 1e9 for k in (1, 2)]
