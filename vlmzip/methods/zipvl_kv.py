"""ZipVL (decode part): the KV entries the prompt's probes attend to most at high bits, the rest at low bits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.budget import Keep
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.selection import probe_rows, share_count, top_k_mask
from vlmzip.stages import DecodeMethod, LayerEntries, PromptRows, Quantization, StoredEntries, mixed_store


@register_method
@dataclass(frozen=True)
class ZipVLKV(DecodeMethod):
    """ "ZipVL: Efficient Large Vision-Language Models with Dynamic Token Sparsification and KV Cache Compression"
    (arXiv:2410.08584v1; the decode part, which later versions replaced by eviction).

    Mixed-precision KV cache: probe queries (the last ``probes`` text rows and ``random_probes`` random prompt rows)
    give each layer's entries their attention in the prompt pass; the important entries, the fewest holding ``tau``
    of it (a ratio that adapts per layer and input), are stored at ``high`` bits and the rest at ``bits``, keys per
    channel and values per token (KIVI's layout), the last ``residual`` entries in full precision. Published: 4 and
    2 bits (ZipCache's), tau 0.975, 64 + 64 probes.
    """

    name = "zipvl-kv"
    paper = "arXiv:2410.08584"
    title = "ZipVL: Efficient Large Vision-Language Models with Dynamic Token Sparsification and KV Cache Compression"
    deviation = (
        "important entries are chosen once, after the prompt pass, where ZipVL re-compresses every 100 decoded tokens: "
        "generated entries leaving the `residual` window are stored at `high` bits, whole key groups at a time; the "
        "high-bit part of a batch is as wide as its widest sample's important set (rounded up to a group), narrower "
        "samples fill it with their next entries"
    )
    keep: Keep = 1.0
    bits: int = 2
    high: int = 4
    tau: float = 0.975
    probes: int = 64
    random_probes: int = 64
    group_size: int = 32
    residual: int = 128

    def validate(self) -> None:
        if not (isinstance(self.keep, float) and self.keep == 1.0):
            raise PolicyError(f"zipvl-kv: keep={self.keep} is not supported: it quantizes every entry, evicts none")
        if self.bits not in (2, 4, 8) or self.high not in (2, 4, 8) or self.high < self.bits:
            raise PolicyError(f"zipvl-kv: bits={self.bits}, high={self.high}: use 2, 4 or 8 with high >= bits")
        if not 0.0 < self.tau <= 1.0 or self.probes < 1 or self.random_probes < 0:
            raise PolicyError(f"zipvl-kv: tau={self.tau} must be in (0, 1], probes >= 1 and random_probes >= 0")

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        return probe_rows(rows.text, rows.valid, self.probes, self.random_probes)

    def encode(self, entries: LayerEntries, stored: StoredEntries | None) -> StoredEntries | None:
        if stored is not None or entries.attention is None:  # not after the prompt pass: as the base class does
            return super().encode(entries, stored)
        scores = torch.where(entries.valid, entries.attention.float(), 0.0)
        count = share_count(scores, self.tau) if self.tau < 1.0 else entries.valid.sum(dim=1)
        important = top_k_mask(scores, entries.valid, count)
        high = Quantization(self.high, self.group_size, self.residual)  # generated entries join the high part
        index, valid, kv = mixed_store(entries.keys, entries.values, entries.valid, scores, important, high, self.bits)
        return StoredEntries(index, entries.count, kv, valid)
