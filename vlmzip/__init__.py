"""vlmzip: make vision-language models cheaper by pruning, merging and quantizing visual tokens and their
KV cache at every stage of inference, without retraining.

    import vlmzip
    vlmzip.compress(model, policy="vtc-cls:keep=64+fastv:layer=2,keep=0.5+knorm:keep=0.5")
    out = model.generate(**inputs, max_new_tokens=32)
    print(vlmzip.stats(model))
    vlmzip.restore(model)
"""

import vlmzip.methods  # noqa: F401  (registers the built-in methods)
from vlmzip.api import compress, policy_of, restore, stats
from vlmzip.blindsight import calibrate_blindsight
from vlmzip.errors import InputError, PolicyError, UnsupportedModelError, VlmzipError
from vlmzip.policy import Policy
from vlmzip.registry import FamilyInfo, MethodInfo, families, methods, register_method
from vlmzip.stats import Stats

__version__ = "0.1.0"

__all__ = [
    "FamilyInfo",
    "InputError",
    "MethodInfo",
    "Policy",
    "PolicyError",
    "Stats",
    "UnsupportedModelError",
    "VlmzipError",
    "calibrate_blindsight",
    "compress",
    "families",
    "methods",
    "policy_of",
    "register_method",
    "restore",
    "stats",
]
