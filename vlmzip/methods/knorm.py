"""Knorm: evict the visual KV entries whose keys have the largest L2 norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.registry import register_method
from vlmzip.stages import DecodeMethod, LayerEntries


@register_method
@dataclass(frozen=True)
class Knorm(DecodeMethod):
    """ "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression" (Devoto et al., 2024).

    Keys with a low L2 norm draw high attention, so each layer keeps the ``keep`` visual entries with the
    lowest key norm (averaged over KV heads). Text entries are never evicted.
    """

    name = "knorm"
    paper = "arXiv:2406.11430"
    title = "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression"
    deviation = (
        "scores each layer with key norms averaged over KV heads and evicts visual entries only, where KVPress's "
        "KnormPress keeps a set per KV head over all entries"
    )

    def score(self, entries: LayerEntries) -> torch.Tensor:
        return -entries.keys.float().norm(dim=-1).mean(dim=1)
