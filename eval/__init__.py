"""Evaluation: tiny models for tests and demos (``tiny``), speed benchmarks (``bench``), what every accuracy bench
shares (``questions``, ``video`` decoding and frame sampling, ``subtitles``, ``prompts``, ``samples``,
``extractors``, ``scoring``, harness presets in ``compat``), the Video-MME data side (``videomme``), multiple-choice
JSONL files (``mcq``), the evaluation loop behind ``vlmzip eval`` (``runner``, ``predictor``) and its benches
(``benches``), the synthetic image and video question sets (``synthetic``) and the small fidelity models trained on
them: their specs, builders and loading (``fixtures``), tokenizers (``tokenizer``) and processor inputs
(``processing``). Each model family's configs live in one module of ``families``. The fixtures' trainer is not part
of the package: it is ``training/`` in the repository."""
