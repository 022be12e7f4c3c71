"""Random visual-token pruning: the baseline every result table must show."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.registry import register_method
from vlmzip.stages import VisionMethod, VisualItem


@register_method
@dataclass(frozen=True)
class RandomPrune(VisionMethod):
    """Keep a uniformly random subset of each item's tokens; the same ``seed`` and inputs give the same choice."""

    name = "random"
    paper = "baseline"
    title = "random pruning"
    deviation = "seeded by the item's place in its sample: a prompt keeps the same tokens alone or in any batch"
    seed: int = 0

    def score(self, item: VisualItem) -> torch.Tensor:
        # seeded by the item's place within its sample: a prompt gets the same choice alone or in any batch
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + item.sample_index)
        return torch.rand(item.num_tokens, generator=generator)
