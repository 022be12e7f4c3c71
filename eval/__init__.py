"""Evaluation: tiny models for tests and demos (``tiny``), speed benchmarks (``bench``), the Video-MME data
side (``videomme``: layouts, validation, frame sampling, subtitles, prompts, answer extraction, results)."""
