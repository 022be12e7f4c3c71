"""The benches of ``vlmzip eval``, one class each, found by name in a registry (``base``).

Built in: ``videomme`` (a local Video-MME copy), ``mcq`` (a multiple-choice JSONL file), the shipped test
sets ``images`` and ``videos``, and ``captions`` (the fixtures describe generated test scenes). A new bench is
one module: subclass :class:`Bench`, decorate it with :func:`register_bench`, and import the module before
``vlmzip eval``'s command line is parsed.
"""

import importlib

from vlmzip.eval.benches.base import (
    Bench,
    Loaded,
    Option,
    add_arguments,
    bench_class,
    benches,
    choose,
    register_bench,
)

__all__ = ["Bench", "Loaded", "Option", "add_arguments", "bench_class", "benches", "choose", "register_bench"]

# The built-in benches register themselves on import, in this order: the order `--bench` lists them in, and
# the order messages name their data options in.
for _module in ("videomme", "mcq", "bundled", "captions"):
    importlib.import_module(f"vlmzip.eval.benches.{_module}")
