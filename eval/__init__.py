"""Evaluation: tiny models for tests and examples (``vlmzip.eval.tiny``); benchmarks come later."""
