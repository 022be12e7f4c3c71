"""VisionZip: dominant tokens by vision attention, plus contextual tokens merged from the rest by similarity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vlmzip.budget import Keep
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.selection import join_nearest, merge_rows
from vlmzip.stages import ModelInfo, VisionMethod, VisualItem, VisualSelection


@register_method
@dataclass(frozen=True)
class VisionZip(VisionMethod):
    """ "VisionZip: Longer is Better but Not Necessary in Vision Language Models" (dvlab-research/VisionZip).

    Of ``keep`` tokens, ``contextual`` (a fraction of ``keep``, or a count) are contextual, the rest dominant: those
    the [CLS] token attends to most at the feature layer (no [CLS]: the mean attention a token's patches receive).
    Every other token joins the most similar (cosine) of ``contextual`` evenly spaced targets among them, and each
    target becomes their mean. Published splits 54+10, 108+20, 162+30 for 64, 128, 192 (``contextual=0.15625``).
    """

    name = "visionzip"
    paper = "arXiv:2412.04467"
    title = "VisionZip: Longer is Better but Not Necessary in Vision Language Models"
    deviation = (
        "contextual tokens are grouped by cosine similarity of the projected features, not the tower's keys; [CLS] "
        "itself is not kept; a merged token takes its target's place; towers without [CLS]: mean received attention"
    )
    needs = frozenset({"vision_attention"})
    contextual: Keep = 0.15625

    def validate(self) -> None:
        share, keep = self.contextual, self.keep
        if not 0 <= share < math.inf:
            raise PolicyError(f"visionzip: contextual={share!r} must be a fraction of keep in [0, 1) or a count >= 0")
        if share >= (1 if isinstance(share, float) else keep if isinstance(keep, int) else math.inf):
            raise PolicyError(
                f"visionzip: the split contextual={share} is larger than the budget keep={keep} (no dominant token "
                "left); use a count below keep or a fraction below 1 (published: 10 of 64, contextual=0.15625)"
            )

    def vision_layers(self, info: ModelInfo) -> list[int]:
        return [info.vision_layers - 1]  # the feature layer

    def split(self, total: int) -> tuple[int, int]:  # (dominant, contextual); at least one dominant
        wanted = self.contextual if isinstance(self.contextual, int) else math.floor(self.contextual * total + 0.5)
        contextual = min(wanted, total - 1)
        return total - contextual, contextual

    def select(self, item: VisualItem) -> VisualSelection:
        n, total = item.num_tokens, self.budget(item)
        if total == n:
            return VisualSelection(torch.arange(n))
        dominant, contextual = self.split(total)
        order = item.signals["vision_attention"].float().cpu().argsort(descending=True, stable=True)
        if not contextual:
            return VisualSelection(order[:dominant].sort().values)
        rest = order[dominant:].sort().values
        targets = rest[torch.arange(contextual) * len(rest) // contextual]
        keep = torch.cat([order[:dominant], targets]).sort().values
        sources = join_nearest(item.features, keep, targets)
        return VisualSelection(keep, merge_rows(item.features, sources, total), sources)
