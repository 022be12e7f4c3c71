"""Model-family adapters, one module each; importing this package registers them by ``config.model_type``."""

from vlmzip.adapters import gemma3, llava, qwen_vl  # noqa: F401
