"""The evaluation run: results.json contract, report, plots, tokenizer check, CLI."""

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tsdfm.cli import main
from tsdfm.data import DataSpec, MarkovSpec, load_prepared, prepare_data
from tsdfm.errors import TsdfmError
from tsdfm.evaluation import Evaluator, Scores, TruthEvaluator
from tsdfm.evaluation.harness import describe, evaluate
from tsdfm.evaluation.report import (
    ROW_KEYS,
    TOP_KEYS,
    TRUTH_KEYS,
    build_results,
    render_markdown,
    write_report,
)
from tsdfm.generation import SampleSet, read_samples, write_samples
from tsdfm.sample_files import write_compact

L = 16


class StubEvaluator(Evaluator):
    """Every token costs 1 nat: gen-PPL must be exactly e, whatever the text."""

    name = "stub"

    def __init__(self):
        self.calls = 0

    def score(self, texts, ids=None):
        self.calls += 1
        n = np.array([len(t.split()) for t in texts], dtype=np.int64)
        return Scores(n.astype(np.float64), n)


@pytest.fixture(scope="module")
def markov(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    m = MarkovSpec(vocab_size=8, order=1, alpha=0.1, num_train=64, num_valid=16, num_test=96)
    spec = DataSpec(corpus="markov", seq_len=L, markov=m)
    prepare_data(spec, root / "run" / "data", cache_dir=root / "cache", progress=False)
    return load_prepared(root / "run" / "data")


def tiny_uniform_teacher(data, out: Path) -> Path:
    """An untrained uniform-source teacher saved for ``data``'s tokenizer (8 symbols, L = 16)."""
    from tsdfm.models import Denoiser, DenoiserConfig

    torch.manual_seed(0)
    cfg = DenoiserConfig(vocab_size=9, num_classes=8, max_len=L, dim=32, n_layers=1, n_heads=2)
    cfg.time_cond, cfg.source = True, "uniform"
    teacher = Denoiser(cfg).eval()
    teacher.config.tokenizer_fingerprint = data.tokenizer.fingerprint()
    teacher.save_pretrained(out / "model", tokenizer=data.tokenizer)
    return out


def write_chain_samples(path: Path, data, n: int, seed: int, **meta) -> Path:
    ids = torch.as_tensor(data.chain().sample(n, L, seed=seed))
    meta = {"tokenizer_fingerprint": data.tokenizer.fingerprint(), **meta}
    return write_samples(path, SampleSet(ids, data.tokenizer.decode_batch(ids), meta))


def test_results_contract_report_and_plots(markov, tmp_path):
    teacher = write_chain_samples(
        tmp_path / "samples" / "teacher_8.jsonl",
        markov,
        40,
        1,
        model_type="denoiser",
        source="mask",
        steps=8,
        nfe_nominal=8,
        nfe_actual=7.5,
        sec_per_sample=0.002,
        tokens_per_second=8000.0,
    )
    shaped = write_chain_samples(
        tmp_path / "samples" / "shaped_4.jsonl",
        markov,
        64,
        2,
        method="shaped",
        source="mask",
        steps=4,
        shaping={"candidates": 4, "compass": "ar"},
        nfe_nominal=4,
        nfe_actual=4,
        sec_per_sample=0.001,
    )
    stub = StubEvaluator()
    evs = {"truth": TruthEvaluator(markov.chain()), "stub": stub}
    out = tmp_path / "eval"
    res = evaluate([teacher, shaped], evs, markov.directory, out_dir=out, plots=False)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == res
    assert tuple(res) == TOP_KEYS and res["config"] == "run"
    assert res["evaluators"] == ["truth", "stub"] and {"tsdfm", "torch"} <= set(res["versions"])
    assert stub.calls == 3  # data row + two files, one evaluator object for the whole run
    data_row, t_row, s_row = res["rows"]
    for row in res["rows"]:
        assert set(ROW_KEYS) <= set(row) and set(TRUTH_KEYS) <= set(row)
        assert tuple(row)[: len(ROW_KEYS)] == ROW_KEYS
        assert set(row["gen_ppl"]) == {"truth", "stub"}
        assert row["gen_ppl"]["stub"] == pytest.approx(math.e)
        assert row["seq_len"] == L and 0 < row["distinct_2"] <= 1 and row["entropy_std"] >= 0
    assert data_row["method"] == "data" and data_row["samples"] is None
    assert data_row["num_samples"] == 64  # as many as the largest file
    assert (t_row["method"], t_row["source"], t_row["steps"], t_row["candidates"]) == (
        "teacher",
        "mask",
        8,
        None,
    )
    assert (s_row["method"], s_row["candidates"], s_row["compass"]) == ("shaped", 4, "ar")
    assert (out / t_row["samples"]).resolve() == teacher.resolve()
    assert t_row["nfe_actual"] == 7.5 and t_row["tokens_per_second"] == 8000.0
    # chain samples and the test split both score H within sampling error
    for row in (data_row, t_row):
        assert abs(row["truth_nll"] - row["expected_nll"]) < 4 * row["truth_nll_se"] + 1e-9
        assert math.log(row["gen_ppl"]["truth"]) == pytest.approx(row["truth_nll"])
    report = (out / "report.md").read_text()
    assert "gen-PPL truth" in report and "entropy (std)" in report and "data (test split)" in report
    assert not (out / "plots").exists()


def test_plots_are_written_and_linked(tmp_path):
    rows = [
        {"method": "data", "steps": None, "gen_ppl": {"a": 30.0}, "entropy": 4.0},
        *[
            {"method": m, "source": "mask", "steps": s, "candidates": k, "entropy": 3.9}
            | {"gen_ppl": {"a": 40.0 + 100 / s}}
            for m, k in (("teacher", None), ("shaped", 4))
            for s in (8, 64, 1024)
        ],
    ]
    results = build_results("demo", ["a"], [_complete(r) for r in rows])
    write_report(tmp_path, results)
    report = (tmp_path / "report.md").read_text()
    for png in ("gen_ppl_vs_steps.png", "frontier.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000 and f"plots/{png}" in report


def _complete(row):
    return {k: row.get(k) for k in ROW_KEYS} | row


def test_tokenizer_mismatch_is_named(markov, tmp_path):
    path = write_chain_samples(tmp_path / "s.jsonl", markov, 4, 0)
    meta_file = tmp_path / "s.meta.json"
    meta = json.loads(meta_file.read_text())
    meta["tokenizer_fingerprint"] = "f" * 64
    meta_file.write_text(json.dumps(meta))
    evs = {"stub": StubEvaluator()}
    want = markov.tokenizer.fingerprint()[:12]
    with pytest.raises(TsdfmError, match=f"ffffffffffff.*{want}"):
        evaluate([path], evs, markov.directory, out_dir=tmp_path / "e", plots=False)


def test_without_data_dir_uses_file_text(markov, tmp_path):
    path = write_chain_samples(tmp_path / "s.jsonl", markov, 5, 0, model_type="causal", steps=L)
    res = evaluate([path], {"stub": StubEvaluator()}, None, out_dir=tmp_path / "e", plots=False)
    (row,) = res["rows"]
    assert row["method"] == "ar" and row["gen_ppl"]["stub"] == pytest.approx(math.e)
    assert res["config"] == "samples"


def test_describe_infers_method():
    assert describe({"model_type": "causal"})["method"] == "ar"
    assert describe({"model_type": "denoiser"})["method"] == "teacher"
    assert describe({"method": "blind", "candidates": 1})["candidates"] == 1


def test_cli_evaluate_markov_defaults_to_truth(markov, tmp_path, capsys):
    path = write_chain_samples(tmp_path / "s" / "x.jsonl", markov, 8, 0, steps=64)
    argv = ["evaluate", "--samples", str(path), "--data", str(markov.directory), "--no-plots"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "truth-NLL" in out and "| data (test split) |" in out
    res = json.loads((tmp_path / "s" / "eval" / "results.json").read_text())
    assert res["evaluators"] == ["truth"] and len(res["rows"]) == 2
    assert main(["evaluate", "--samples", str(path), "--evaluators", "truth", "--no-plots"]) == 2
    assert "markov" in capsys.readouterr().err


def test_cached_teacher_row_reports_uncached_time_and_speedups(markov, tmp_path):
    """Section-8 speed fields: the teacher row's sec_per_sample is the plain sampler's time, the
    cached one sits beside it, and every row's speed-up is measured against both."""
    teacher = write_chain_samples(
        tmp_path / "samples" / "teacher_1024.jsonl",
        markov,
        32,
        1,
        source="mask",
        steps=1024,
        sec_per_sample=0.5,
        sec_per_sample_uncached=4.0,
    )
    student = write_chain_samples(
        tmp_path / "samples" / "blind_8.jsonl",
        markov,
        32,
        2,
        method="blind",
        source="mask",
        steps=8,
        sec_per_sample=0.04,
    )
    out = tmp_path / "eval"
    evs = {"truth": TruthEvaluator(markov.chain())}
    res = evaluate(
        [teacher, student],
        evs,
        markov.directory,
        out_dir=out,
        plots=False,
        run_config={"name": "unit"},
    )
    _, t_row, s_row = res["rows"]
    assert (t_row["sec_per_sample"], t_row["sec_per_sample_cached"]) == (4.0, 0.5)
    assert s_row["sec_per_sample_cached"] is None
    assert s_row["speedup"] == pytest.approx(100.0)
    assert s_row["speedup_cached"] == pytest.approx(12.5)
    assert t_row["speedup"] == pytest.approx(1.0)
    assert res["run_config"] == {"name": "unit"}
    report = (out / "report.md").read_text()
    assert "100.0x (12.5x)" in report and "speed-up vs teacher@1024" in report
    assert "## Samples" in report and "**blind_8**" in report and '"name": "unit"' in report


def test_plot_series_one_line_per_arm_across_seeds():
    from tsdfm.evaluation.plots import _series_key

    rows = [
        {"method": "blind", "source": "uniform", "arm": "probs s0"},
        {"method": "blind", "source": "uniform", "arm": "probs s1"},
        {"method": "blind", "source": "uniform", "arm": "logits s0"},
        {"method": "teacher", "source": "uniform"},
    ]
    assert [_series_key(r) for r in rows] == ["probs", "probs", "logits", "teacher (uniform)"]


def test_rows_sampled_at_another_temperature_are_their_own_series():
    from tsdfm.evaluation.labels import temperature_tag
    from tsdfm.evaluation.plots import _series_key

    meta = {"method": "blind", "label": "probs s0", "sampler": {"temperature": 0.85}}
    row = describe(meta)
    assert row["temperature"] == 0.85 and temperature_tag(row) == " T=0.85"
    assert _series_key(row) == "probs T=0.85"
    # T = 1 and files written before the sampler recorded a temperature keep the plain name
    assert temperature_tag(describe({"sampler": {"temperature": 1.0}})) == ""
    assert _series_key(describe({"method": "teacher", "source": "mask"})) == "teacher (mask)"


def test_exact_sampler_script_writes_one_labelled_file_per_temperature(
    markov, tmp_path, load_script, monkeypatch
):
    import sys

    argv = ["x", "--data", str(markov.directory), "--steps", "2", "--num", "64"]
    argv += ["--batch-size", "32", "--temperature", "1", "0.5", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    load_script("exact_sampler").main()
    ids1, _, meta1 = read_samples(tmp_path / "exact_2.jsonl")
    ids05, _, meta05 = read_samples(tmp_path / "exact-T0.5_2.jsonl")
    assert meta1["sampler"]["temperature"] == 1.0 and meta05["sampler"]["temperature"] == 0.5
    assert describe(meta05)["arm"] == "exact denoiser" and meta05["nfe_nominal"] == 2
    assert ids1.shape == ids05.shape == (64, L) and not torch.equal(ids1, ids05)
    monkeypatch.setattr(sys, "argv", argv[:-3] + ["0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="temperatures must be > 0"):
        load_script("exact_sampler").main()
    # the uniform-source exact denoiser: its own file name and label, uniform noise as x0
    monkeypatch.setattr(sys, "argv", argv[:-5] + ["--source", "uniform", "--out", str(tmp_path)])
    load_script("exact_sampler").main()
    idsu, _, metau = read_samples(tmp_path / "exact-uniform_2.jsonl")
    assert metau["source"] == "uniform" and describe(metau)["arm"] == "exact denoiser (uniform)"
    assert not metau["sampler"]["forward_cache"] and idsu.shape == (64, L)
    assert int(idsu.max()) < markov.tokenizer.mask_id
    # the composed law of 4 fine exact jumps per unit time, factorised over 2 chains
    comp = argv[:-5] + ["--source", "uniform", "--composite", "4", "--chains", "2"]
    monkeypatch.setattr(sys, "argv", [*comp, "--out", str(tmp_path)])
    load_script("exact_sampler").main()
    idsc, _, metac = read_samples(tmp_path / "exact-uniform-composite4_2.jsonl")
    assert describe(metac)["arm"] == "exact composite 4 (uniform)" and idsc.shape == (64, L)
    assert metac["sampler"]["kind"] == "composite" and metac["sampler"]["chains"] == 2
    assert metac["nfe_nominal"] == 2 and int(idsc.max()) < markov.tokenizer.mask_id
    monkeypatch.setattr(sys, "argv", [*comp[:-4], "--composite", "3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="divide"):
        load_script("exact_sampler").main()
    # the same composite driven by a trained teacher, checked against the requested source
    teacher = tiny_uniform_teacher(markov, tmp_path / "teacher")
    monkeypatch.setattr(sys, "argv", [*comp, "--teacher", str(teacher), "--out", str(tmp_path)])
    load_script("exact_sampler").main()
    idst, _, metat = read_samples(tmp_path / "teacher-uniform-composite4_2.jsonl")
    assert metat["method"] == "teacher-composite" and metat["model"] == str(teacher)
    assert idst.shape == (64, L) and int(idst.max()) < markov.tokenizer.mask_id
    # --device moves only the teacher's forward passes; the draws stay on the CPU generator
    cpu = [*comp, "--teacher", str(teacher), "--device", "cpu", "--out", str(tmp_path / "cpu")]
    monkeypatch.setattr(sys, "argv", cpu)
    load_script("exact_sampler").main()
    assert torch.equal(read_samples(tmp_path / "cpu/teacher-uniform-composite4_2.jsonl")[0], idst)
    if not torch.cuda.is_available():
        monkeypatch.setattr(sys, "argv", [*cpu[:-3], "cuda", *cpu[-2:]])
        with pytest.raises(SystemExit, match="no CUDA"):
            load_script("exact_sampler").main()
    mask = [a for a in comp if a not in ("--source", "uniform")]
    monkeypatch.setattr(sys, "argv", [*mask, "--teacher", str(teacher), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="uniform-source teacher"):
        load_script("exact_sampler").main()


def test_report_opens_with_same_seed_samples_side_by_side(tmp_path):
    """Teacher @ most steps, blind @ 8, shaped @ 8 (whichever exist) side by side, before the
    metric table; the gen-PPL-vs-steps plot right after it, then the budget sentence."""
    (tmp_path / "samples").mkdir()
    rows = [{"method": "data", "steps": None, "gen_ppl": {"a": 30.0}, "entropy": 4.0}]
    for method, steps in (("teacher", 1024), ("teacher", 8), ("blind", 8), ("shaped", 8)):
        name = f"{method}_{steps}"
        records = [{"ids": [i], "text": f"{name} sample {i}"} for i in range(4)]
        path = tmp_path / "samples" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        rows.append(
            {"method": method, "steps": steps, "label": name, "samples": f"samples/{name}.jsonl"}
            | {"gen_ppl": {"a": 40.0}, "entropy": 3.9}
        )
    rows.append(rows[-1] | {"label": "blind-T0.9_8", "method": "blind", "temperature": 0.9})
    run_config = {"teacher": {"train": {"steps": 900}}, "student": {"train": {"steps": 60}}}
    results = build_results("demo", ["a"], [_complete(r) for r in rows], run_config)
    md = render_markdown(results, ["plots/frontier.png", "plots/gen_ppl_vs_steps.png"], tmp_path)
    head = md.index("## Samples side by side")
    assert head < md.index("## Metrics") < md.index("gen_ppl_vs_steps.png") < md.index("frontier")
    assert "| # | teacher_1024 | blind_8 | shaped_8 |" in md
    assert "| 1 | teacher_1024 sample 1 | blind_8 sample 1 | shaped_8 sample 1 |" in md
    table = md[head : md.index("## Metrics")]
    assert "blind-T0.9_8" not in table and "teacher_8 " not in table
    assert "at most 900 training steps, students of 60 steps" in md
    # a published folder that keeps only some rows' samples still renders the rest
    (tmp_path / "samples" / "shaped_8.jsonl").unlink()
    md = render_markdown(results, [], tmp_path)
    assert "| # | teacher_1024 | blind_8 |\n" in md


def test_compact_samples_read_like_plain_ones(tmp_path):
    """.jsonl.gz, ids-only records and a .jsonl path whose file was compacted read the same."""
    ids = [[3, 1, 2], [0, 0, 5]]
    plain = tmp_path / "markov_8.jsonl"
    plain.write_text(
        "".join(json.dumps({"text": " ".join(map(str, r)), "ids": r}) + "\n" for r in ids)
    )
    (tmp_path / "markov_8.meta.json").write_text('{"steps": 8}')
    want = read_samples(plain)
    gz = write_compact(plain, ids, want[1])
    assert gz.name == "markov_8.jsonl.gz" and b'"text"' not in gzip.decompress(gz.read_bytes())
    plain.unlink()
    for path in (gz, plain):  # the old name resolves to the compacted file
        got = read_samples(path)
        assert torch.equal(got[0], want[0]) and got[1] == want[1] and got[2] == {"steps": 8}
    text = write_compact(tmp_path / "text_8.jsonl", ids, ["a b", "c"])
    assert read_samples(text)[1] == ["a b", "c"]  # real text is kept when ids do not spell it
    text.write_bytes(text.read_bytes()[:20])
    with pytest.raises(TsdfmError, match="text_8.jsonl.gz cannot be read"):
        read_samples(text)
