"""Evaluation: metrics, feature extractors, gates, the evaluation suite."""
