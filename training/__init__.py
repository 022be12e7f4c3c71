"""How the shipped fidelity fixtures were made: the trainer, its launcher and the record of its runs.

Not installed and never imported by ``vlmzip``: run it from the repository root (``python -m training train ...``)
with vlmzip installed. ``training/README.md`` says how each shipped fixture was trained.
"""
