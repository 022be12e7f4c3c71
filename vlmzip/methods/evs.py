"""EVS: drop the video tokens that barely changed since the previous frame, before the vision tower encodes them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlmzip.budget import Keep, kept_count
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.stages import VisionMethod, VisualItem, VisualSelection


@register_method
@dataclass(frozen=True)
class EVS(VisionMethod):
    """ "Efficient Video Sampling: Pruning Temporally Redundant Tokens for Faster VLM Inference" (Bagrov et al.,
    2025); videos only.

    A token's change is ``1 - cos`` between it and the token at its place one temporal step earlier: on the pixels
    the tower is given (``at_layer=0``, the default: dropped patches are never encoded) or on the tower's hidden
    states before layer ``at_layer``. The first step is kept whole; the rest rank by change, for ``keep`` tokens in
    all (at least one step's). ``threshold`` > 0 also drops every later token whose change is below it, so static
    videos keep fewer. Published (vLLM's ``video_pruning_rate``): the same ranking and count, on the tower's output.
    """

    name = "evs"
    paper = "arXiv:2510.14624"
    title = "Efficient Video Sampling: Pruning Temporally Redundant Tokens for Faster VLM Inference"
    deviation = "compares pixels before the tower (or hidden states inside it), not the tower's output embeddings"
    needs = frozenset({"pixels"})
    media = frozenset({"video"})
    keep: Keep = 0.25
    threshold: float = 0.0

    def validate(self) -> None:
        if not 0 <= self.threshold <= 2:
            raise PolicyError(f"{self.name}: threshold={self.threshold} must be in [0, 2] (a 1 - cosine distance)")

    @property
    def tower_layer(self) -> int:
        return self.at_layer

    def select(self, item: VisualItem) -> VisualSelection:
        frames, per_frame = item.grid[0], item.num_tokens // item.grid[0]
        x = item.signals["pixels"].flatten(1) if self.at_layer == 0 else item.features
        x = x.float().view(frames, per_frame, -1)
        change = torch.full((frames, per_frame), float("inf"), device=x.device)
        change[1:] = 1 - F.cosine_similarity(x[1:], x[:-1], dim=-1)
        change = change.flatten().cpu()
        count = max(per_frame, kept_count(self.keep, item.num_tokens))
        count = min(count, per_frame + int((change[per_frame:] >= self.threshold).sum()))
        return VisualSelection(change.argsort(descending=True, stable=True)[:count].sort().values)
