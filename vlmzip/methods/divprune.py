"""DivPrune: keep the most diverse visual tokens (greedy max-min over cosine distance); no attention needed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.registry import register_method
from vlmzip.selection import batched_greedy_max_min
from vlmzip.stages import VisionMethod, VisualItem, VisualSelection, greedy_by_size, unit_features


@register_method
@dataclass(frozen=True)
class DivPrune(VisionMethod):
    """ "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models" (CVPR 2025).

    Keeps ``keep`` tokens per item chosen by greedy max-min diversity: each next token is the one farthest (cosine
    distance of the projected features) from its nearest token already kept, starting from the token farthest
    from its nearest neighbour (as the reference's first step). Needs no attention, so the model keeps any backend.
    The paper's only parameter is the kept share; vlmzip's default, like every vision method's, is 64 tokens.
    """

    name = "divprune"
    paper = "arXiv:2503.02175"
    title = "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models"
    deviation = "none beyond batching: each image (or video) of a batched request is pruned on its own (all at once)"

    def select_batch(self, items: list[VisualItem]) -> list[VisualSelection]:
        return greedy_by_size(self, items, self._choose)

    def _choose(self, items: list[VisualItem], count: int) -> torch.Tensor:
        unit = unit_features(items)
        return batched_greedy_max_min(1 - unit @ unit.mT, torch.full((len(items),), count))
