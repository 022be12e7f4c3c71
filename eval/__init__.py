"""Evaluation: tiny models for tests and demos (``tiny``), speed benchmarks (``bench``), the Video-MME data
side (``videomme``: layouts, validation, frame sampling, subtitles, prompts, answer extraction, results), and
the synthetic image and video question sets the bundled fidelity models are trained on (``synthetic``)."""
