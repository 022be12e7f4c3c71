"""KIVI: every KV entry but a recent window stored at 2 (or 4, 8) bits, keys per channel and values per token."""

from __future__ import annotations

from dataclasses import dataclass

from vlmzip.budget import Keep
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.stages import DecodeMethod


@register_method
@dataclass(frozen=True)
class Kivi(DecodeMethod):
    """ "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache" (Liu et al., 2024).

    After the prompt pass every full-attention layer keeps all its entries, text and visual, but stores them
    quantized (asymmetric min-max codes, a scale and zero point per group): keys per channel, in groups of
    ``group_size`` tokens (keys have outlier channels), values per token, in groups of ``group_size`` channels. The
    last ``residual`` entries stay in full precision; as generation appends, whole groups leaving that window are
    quantized. Decode steps read the packed cache directly. Published: 2 bits, groups of 32, a window of 128.
    To evict first and then quantize what is kept, give an eviction method ``bits`` (``knorm:keep=0.5,bits=2``).
    """

    name = "kivi"
    paper = "arXiv:2402.02750"
    title = "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"
    deviation = (
        "one window for keys and values: the packed part is whole key groups and the last `residual` to "
        "`residual + group_size - 1` entries stay in full precision (KIVI keeps keys' remainder and values' last "
        "`residual` apart); value groups are `min(group_size, head_dim)` channels; scales and zero points in the "
        "model's dtype; padding keys take their sample's nearest valid key before quantizing"
    )
    keep: Keep = 1.0
    bits: int = 2
    group_size: int = 32
    residual: int = 128

    def validate(self) -> None:
        if not (isinstance(self.keep, float) and self.keep == 1.0):
            raise PolicyError(
                f"kivi: keep={self.keep} is not supported: kivi quantizes every entry and evicts none; to evict "
                f"first, give an eviction method bits (knorm:keep={self.keep},bits={self.bits})"
            )
        if self.bits not in (2, 4, 8):
            raise PolicyError(f"kivi: bits={self.bits} is not supported: use 2, 4 or 8 (KIVI: 2)")
