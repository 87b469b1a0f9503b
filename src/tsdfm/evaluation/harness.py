"""The evaluation run: samples files + evaluators -> rows -> results.json, report.md, plots.

Every row is measured the same way (DESIGN.md section 5):

* gen-PPL per evaluator, pooled: ``exp(sum_i nll_i / sum_i tokens_i)`` on the decoded text with
  special tokens dropped, re-tokenized by each evaluator;
* per-sample unigram entropy (mean, std) and distinct-2/3 on the project tokenizer's ids;
* the samples file's own speed record (nominal/actual NFE, seconds per sample, tokens/s);
* for ``markov`` data, the truth evaluator's exact truth-NLL, entropy rate H and n-gram TV.

Two reference rows come first (``references.py``), as many sequences as the largest samples
file: ``data``, held-out *test* text cut into the samples' length L (the floor every model row
is read against), and on text corpora ``salad``, the same sequences with their words shuffled
(equal entropy, no order: the word-salad ceiling a model must beat). Their text is never
written out (a committed report carries only their statistics).

Text is decoded from the ids with the data directory's tokenizer, after checking that the
samples were made with that tokenizer (fingerprint in the samples' metadata): ids from another
tokenizer would decode to different, meaningless text and still produce numbers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tsdfm.errors import TsdfmError
from tsdfm.evaluation.evaluators import Evaluator
from tsdfm.evaluation.metrics import distinct_n, entropy_stats
from tsdfm.evaluation.references import SampleFile, reference_sample, word_salad
from tsdfm.sample_files import samples_stem


def load_sample_file(path: str | Path, tokenizer=None, data_dir: Path | None = None) -> SampleFile:
    """Read a samples file; with a tokenizer, check its fingerprint and decode the ids afresh."""
    from tsdfm.generation import read_samples
    from tsdfm.sample_files import resolve_samples

    path = resolve_samples(path)
    ids, texts, meta = read_samples(path)
    if tokenizer is not None:
        fp, want = meta.get("tokenizer_fingerprint"), tokenizer.fingerprint()
        if fp and fp != want:
            raise TsdfmError(
                f"{path} was made with tokenizer {fp[:12]}, but the data in {data_dir} uses "
                f"tokenizer {want[:12]}: evaluate it with the data directory it was trained on "
                "(--data)"
            )
        texts = tokenizer.decode_batch(ids, skip_special=True)
    return SampleFile(path, ids.numpy(), list(texts), meta)


def describe(meta: dict[str, Any]) -> dict[str, Any]:
    """method/source/steps/candidates/compass + speed, from a samples file's provenance."""
    shaping = meta.get("shaping") if isinstance(meta.get("shaping"), dict) else {}
    method = meta.get("method")
    if method is None:
        method = "ar" if meta.get("model_type") == "causal" else "teacher"
    candidates = meta.get("candidates", shaping.get("candidates"))
    compass = meta.get("compass", shaping.get("compass"))
    return {
        "arm": meta.get("label"),
        "method": method,
        "source": meta.get("source"),
        "steps": meta.get("steps"),
        "candidates": candidates,
        "compass": compass,
        "temperature": (meta.get("sampler") or {}).get("temperature"),
        "nfe_nominal": meta.get("nfe_nominal"),
        "nfe_actual": meta.get("nfe_actual"),
        # The plain (uncached) sampler is the honest baseline; the cached time sits beside it.
        "sec_per_sample": meta.get("sec_per_sample_uncached", meta.get("sec_per_sample")),
        "sec_per_sample_cached": (
            meta.get("sec_per_sample") if "sec_per_sample_uncached" in meta else None
        ),
        "tokens_per_second": meta.get("tokens_per_second"),
    }


def measure(sf: SampleFile, evaluators: dict[str, Evaluator], verbose: bool = True) -> dict:
    """Statistics of one sample set under every evaluator."""
    ids = sf.ids
    entropy, entropy_std = entropy_stats(ids)
    row: dict[str, Any] = {
        "num_samples": int(ids.shape[0]),
        "seq_len": int(ids.shape[1]),
        "gen_ppl": {},
        "eval_tokens": {},
        "entropy": entropy,
        "entropy_std": entropy_std,
        "distinct_2": distinct_n(ids, 2),
        "distinct_3": distinct_n(ids, 3),
    }
    for name, ev in evaluators.items():
        t0 = time.perf_counter()
        scores = ev.score(sf.texts, ids)
        row["gen_ppl"][name] = scores.gen_ppl
        row["eval_tokens"][name] = int(scores.tokens.sum())
        row.update(ev.row_metrics(ids))
        if verbose:
            label = sf.path.name if sf.path else sf.meta.get("method", "data")
            print(
                f"  {label}: {name} gen-PPL {scores.gen_ppl:.3f} over {row['eval_tokens'][name]} "
                f"tokens ({time.perf_counter() - t0:.1f}s)"
            )
    return row


def evaluate(
    samples_files: list[str | Path],
    evaluators: dict[str, Evaluator],
    data_dir: str | Path | None = None,
    reference_text: bool = True,
    out_dir: str | Path = "eval",
    config_name: str | None = None,
    plots: bool = True,
    verbose: bool = True,
    run_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every samples file (plus the reference rows) and write the report files.

    ``reference_text``: add the ``data`` row and, on a text corpus, the ``salad`` row.
    """
    from tsdfm.evaluation.report import build_results, write_report

    if not samples_files:
        raise TsdfmError("no samples files to evaluate: pass --samples FILE ...")
    out_dir = Path(out_dir)
    data = None
    if data_dir is not None:
        from tsdfm.data import load_prepared

        data = load_prepared(Path(data_dir))
    tok = data.tokenizer if data is not None else None
    files = [load_sample_file(f, tok, data_dir) for f in samples_files]
    rows = []
    if reference_text and data is not None:
        num = max(len(f.ids) for f in files)
        ref = reference_sample(data, num, files[0].ids.shape[1])
        rows.append({**_reference_describe("data"), **measure(ref, evaluators, verbose)})
        if data.tokenizer.kind == "bpe":
            salad = word_salad(ref, data.tokenizer)
            rows.append({**_reference_describe("salad"), **measure(salad, evaluators, verbose)})
    for sf in files:
        rel = os.path.relpath(sf.path.resolve(), out_dir.resolve())
        rows.append({**describe(sf.meta), **measure(sf, evaluators, verbose), "samples": rel})
        rows[-1]["label"] = samples_stem(sf.path)
    name = config_name or (Path(data_dir).resolve().parent.name if data_dir else "samples")
    results = build_results(name, list(evaluators), rows, run_config=run_config)
    write_report(out_dir, results, plots=plots)
    return results


_REFERENCE_LABELS = {
    "data": "data (test split)",
    "salad": "word salad (test split, words shuffled)",
}


def _reference_describe(method: str) -> dict[str, Any]:
    return {
        "method": method,
        "source": None,
        "steps": None,
        "candidates": None,
        "compass": None,
        "nfe_nominal": None,
        "nfe_actual": None,
        "sec_per_sample": None,
        "sec_per_sample_cached": None,
        "tokens_per_second": None,
        "label": _REFERENCE_LABELS[method],
        "samples": None,
    }
