"""CPU diagnostics of the fixtures and their training, each run from the repository root as
``python -m training.diagnostics.NAME ...`` (its docstring says what it measured; training/README.md, the results)."""
