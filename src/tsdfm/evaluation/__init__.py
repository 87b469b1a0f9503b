"""Evaluation: exact truth metrics on ``markov``; gen-PPL harness (later)."""

from tsdfm.evaluation.truth import truth_metrics, unigram_entropy

__all__ = ["truth_metrics", "unigram_entropy"]
