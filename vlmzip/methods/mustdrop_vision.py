"""MustDrop (vision part): merge each spatial window of near-identical tokens into one token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.budget import Keep
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.selection import merge_rows, spatial_windows, window_similarity
from vlmzip.stages import ModelInfo, VisionMethod, VisualItem, VisualSelection


@register_method
@dataclass(frozen=True)
class MustDropVision(VisionMethod):
    """ "Multi-Stage Vision Token Dropping: Towards Efficient Multimodal Large Language Model" (vision part).

    Local spatial merging: each frame is tiled into ``window x window`` windows; a window whose tokens' mean
    pairwise cosine similarity is at least ``threshold`` becomes one token, their mean, in the place of its
    centre token. ``keep`` caps the count (default: no cap): the most similar windows below the threshold merge
    too until it is met, and if every window is merged and it still is not, evenly spaced survivors remain. The
    survivors of the ``key_set`` share of tokens most attended in the tower's last layer are protected: later stages
    keep them. Published: 3x3 windows, threshold 0.8, a key set of ~8%."""

    name = "mustdrop-vision"
    paper = "arXiv:2411.10803"
    title = "Multi-Stage Vision Token Dropping: Towards Efficient Multimodal Large Language Model"
    deviation = (
        "after the projector, on the language model's input features (the reference merges inside the tower); "
        "per item rather than the batch's minimum merge count; the key set is protected from prefill cuts, not from "
        "decode eviction; a `threshold` above 1 merges nothing"
    )
    needs = frozenset({"vision_attention"})
    window: int = 3
    threshold: float = 0.8
    key_set: float = 0.08
    keep: Keep = 1.0

    def validate(self) -> None:
        if self.window < 2 or self.threshold < -1 or not 0 <= self.key_set <= 1:
            raise PolicyError(f"{self}: window must be >= 2, threshold >= -1 and key_set in [0, 1]")

    def vision_layers(self, info: ModelInfo) -> list[int]:
        return [info.vision_layers - 1]  # the key set: what the last tower layer attends to

    def select(self, item: VisualItem) -> VisualSelection:
        n, budget = item.num_tokens, self.budget(item)
        tiles = spatial_windows(item.grid, self.window)
        sizes, similarity = window_similarity(item.features, tiles)
        order = similarity.masked_fill(sizes < 2, float("-inf")).argsort(descending=True, stable=True)
        saved = (sizes[order] - 1).cumsum(dim=0)  # tokens gone once the first i + 1 windows of `order` merge
        needed = int((saved < n - budget).sum()) + 1 if n > budget else 0
        passing = int((similarity[sizes > 1] >= self.threshold).sum())
        merged = torch.zeros(len(sizes), dtype=torch.bool)
        merged[order[: min(max(passing, needed), int((sizes > 1).sum()))]] = True
        centre = tiles.argsort(stable=True)[sizes.cumsum(dim=0) - sizes + sizes // 2]  # each window's middle token
        keep = (~merged[tiles] | (torch.arange(n) == centre[tiles])).nonzero().flatten()
        if len(keep) > budget:  # every window merged and still over the cap: evenly spaced survivors
            keep = keep[(torch.arange(budget) * 2 + 1) * len(keep) // (2 * budget)]
        place = torch.full((n,), -1, dtype=torch.long)
        place[keep] = torch.arange(len(keep))
        sources = torch.where(merged[tiles], place[centre[tiles]], place)
        key = sources[item.signals["vision_attention"].float().cpu().topk(round(self.key_set * n)).indices]  # survivors
        protected = keep[key[key >= 0]].unique()
        if len(keep) == n:
            return VisualSelection(keep, protected=protected)
        return VisualSelection(keep, merge_rows(item.features, sources, len(keep)), sources, protected)
