"""Model-family adapters, one module each; importing this package registers them by ``config.model_type``."""

from vlmzip.adapters import llava  # noqa: F401
