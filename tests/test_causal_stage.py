"""The causal LM stage: trains on the train split, saves a loadable model, samples via the CLI."""

import csv
import json
import math

import pytest
import torch
import yaml

from tsdfm.cli import main
from tsdfm.config import load_config
from tsdfm.data import DataSpec, prepare_data
from tsdfm.errors import TsdfmError
from tsdfm.generation import read_samples
from tsdfm.models import CausalLM, Denoiser, DenoiserConfig, load_pretrained
from tsdfm.training.causal import check_compass_size, train_causal

V, L = 8, 16

TINY = {
    "name": "tinycausal",
    "data": {
        "corpus": "markov",
        "seq_len": L,
        "markov": {
            "vocab_size": V,
            "order": 1,
            "alpha": 0.1,
            "num_train": 256,
            "num_valid": 32,
            "num_test": 64,
        },
    },
}
TRAIN = {
    "steps": 60,
    "batch_size": 16,
    "lr": 0.01,
    "warmup_steps": 5,
    "ema_decay": 0.5,
    "eval_every": 30,
    "eval_batches": 2,
    "ckpt_every": 30,
    "log_every": 5,
}


@pytest.fixture(scope="module")
def markov_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    spec = DataSpec.from_dict(TINY["data"])
    prepare_data(spec, root / "data", cache_dir=root / "cache", progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    small = {"model": {"dim": 32, "n_layers": 1, "n_heads": 2}, "train": TRAIN}
    tree = {**TINY, "compass": small, "ar_baseline": small}
    path.write_text(yaml.safe_dump(tree))
    return path


def test_compass_trains_and_loss_decreases(markov_dir, config_file, tmp_path):
    cfg = load_config(config_file)
    model_dir = train_causal(cfg, "compass", markov_dir, tmp_path / "compass", progress=False)
    with open(tmp_path / "compass" / "eval.csv") as f:
        val = [float(r["val_loss"]) for r in csv.DictReader(f)]
    assert val[-1] < math.log(V) - 0.3  # a uniform guess scores ln V
    summary = json.loads((tmp_path / "compass" / "summary.json").read_text())
    assert summary["complete"] and summary["role"] == "compass" and summary["stage"] == "compass"
    # ship: auto keeps the EMA or the raw weights, whichever validates better
    shipped_loss = summary["val_losses"][summary["shipped"]] if summary["val_losses"] else val[-1]
    assert summary["parameters"] > 0 and summary["final_val_loss"] == pytest.approx(shipped_loss)
    assert summary["val_losses"] is None or summary["val_losses"]["ema"] == pytest.approx(
        val[-1], abs=1e-5
    )
    assert summary["tokens_per_second"] > 0 and "train_seconds" in summary
    model, tok = load_pretrained(model_dir)
    assert isinstance(model, CausalLM) and tok.fingerprint() == model.config.tokenizer_fingerprint
    assert model.config.extra["role"] == "compass" and model.config.max_len == L
    e = model.energy(torch.randint(0, V, (4, L)))
    assert e.shape == (4,) and torch.isfinite(e).all()
    with pytest.raises(TsdfmError, match="--resume"):
        train_causal(cfg, "compass", markov_dir, tmp_path / "compass", progress=False)


def test_unknown_role(markov_dir, config_file, tmp_path):
    with pytest.raises(TsdfmError, match="evaluator-small"):
        train_causal(load_config(config_file), "judge", markov_dir, tmp_path / "x")


def test_compass_size_check(tmp_path, capsys):
    torch.manual_seed(0)
    teacher = Denoiser(
        DenoiserConfig(vocab_size=9, num_classes=8, max_len=L, dim=32, n_layers=2, n_heads=2)
    )
    teacher.save_pretrained(tmp_path / "teacher" / "model")
    n = sum(p.numel() for p in teacher.parameters())
    assert check_compass_size(n // 8, tmp_path / "teacher") == pytest.approx((n // 8) / n)
    assert "warning" not in capsys.readouterr().out
    check_compass_size(n // 2, tmp_path / "teacher" / "model")
    assert "warning: the compass has" in capsys.readouterr().out
    assert check_compass_size(10**9, None) is None


def test_cli_train_ar_then_sample(markov_dir, config_file, tmp_path, capsys):
    out = tmp_path / "ar"
    argv = ["train", "causal", "--role", "ar", "--config", str(config_file)]
    argv += ["--data", str(markov_dir), "--out", str(out), "--no-progress"]
    assert main(argv + ["ar_baseline.train.steps=4"]) == 0
    samples = tmp_path / "s.jsonl"
    argv = ["sample", "--model", str(out / "model"), "--num", "5", "--batch-size", "2"]
    assert main(argv + ["--seed", "3", "--out", str(samples), "--show", "1"]) == 0
    ids, texts, meta = read_samples(samples)
    assert ids.shape == (5, L) and int(ids.max()) < V and len(texts) == 5
    assert meta["model_type"] == "causal" and meta["sampler"]["kind"] == "autoregressive-kv-cache"
    assert meta["nfe_nominal"] == L and meta["source"] is None
    model, _ = load_pretrained(out / "model")
    g = torch.Generator().manual_seed(3)  # same seed, same batches -> same ids
    again = torch.cat([model.generate(2, L, g), model.generate(2, L, g), model.generate(1, L, g)])
    assert torch.equal(again, ids)


def test_cli_bad_role_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "causal", "--role", "judge"])
    assert e.value.code == 2
