"""Built-in compression methods, one small module each; importing this package registers them."""

from vlmzip.methods import fastv, knorm, random, uniform, vtc_cls  # noqa: F401
from vlmzip.methods.base import DecodeMethod, Method, PrefillMethod, VisionMethod, VisualItem

__all__ = ["DecodeMethod", "Method", "PrefillMethod", "VisionMethod", "VisualItem"]
