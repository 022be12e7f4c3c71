"""Random KV eviction: the baseline every decode table must show."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.registry import register_method
from vlmzip.stages import DecodeMethod, LayerEntries


@register_method
@dataclass(frozen=True)
class RandomKV(DecodeMethod):
    """Keep a uniformly random subset of each layer's visual KV entries (text entries are never evicted).

    An entry's score is drawn for its place in the prompt (its position counted from the sample's first entry) and
    its layer, from ``seed``: a prompt keeps the same entries alone or in any batch, and layers choose apart.
    """

    name = "random-kv"
    paper = "baseline"
    title = "random KV eviction"
    seed: int = 0

    def score(self, entries: LayerEntries) -> torch.Tensor:
        first = entries.positions.masked_fill(~entries.valid, torch.iinfo(torch.long).max).amin(dim=1, keepdim=True)
        place = (entries.positions - first).clamp(min=0)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + entries.layer)
        draws = torch.rand(int(place.max()) + 1, generator=generator).to(place.device)
        return draws[place]
