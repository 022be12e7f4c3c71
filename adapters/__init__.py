"""Model-family adapters, one module each; importing this package registers them by ``config.model_type``."""

from vlmzip.adapters import gemma3, llava, llava_next, llava_onevision, qwen_vl  # noqa: F401
