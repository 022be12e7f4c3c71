"""FastV: drop the visual tokens the last prompt token attends to least, from layer K on."""

from __future__ import annotations

from dataclasses import dataclass

from vlmzip.registry import register_method
from vlmzip.stages import OneCutMethod


@register_method
@dataclass(frozen=True)
class FastV(OneCutMethod):
    """ "An Image is Worth 1/2 Tokens After Layer 2" (FastV; pkunlp-icler/FastV).

    At layer ``layer - 1`` the last prompt token's attention, averaged over heads, scores every visual
    token; from ``layer`` on only the top ``keep`` of each sample's visual tokens remain, at their original
    positions. Published defaults: layer 2, keep 50%.
    """

    name = "fastv"
    paper = "arXiv:2403.06764"
    title = "An Image is Worth 1/2 Tokens After Layer 2"
    deviation = (
        "scores come from a registered attention function while the model keeps its backend (sdpa, flash), where "
        "the reference switches layer K-1 to eager attention; batches of any size, each sample its own budget"
    )
