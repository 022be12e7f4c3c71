"""FastVID: segments of similar frames, then per segment salient tokens plus density peaks that absorb the rest."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip import selection
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.stages import ModelInfo, VisionMethod, VisualItem, VisualSelection


@register_method
@dataclass(frozen=True)
class FastVID(VisionMethod):
    """ "FastVID: Dynamic Density Pruning for Fast Video Large Language Models" (LunarShen/FastVID); videos only.
    Segments: cuts after the ``segments - 1`` weakest transitions between consecutive frames (cosine of their mean
    features) and after every one below ``tau``. Each segment gets a share of ``keep`` by size: ``contextual`` of it
    (at least one) density peaks (DPC-kNN, 4 neighbours) among its anchor frames' tokens (every ``anchor_every``-th
    from its end; all frames if too few), the rest each frame's most attended tokens (last tower layer). Other tokens
    join their segment's most similar peak, which becomes ``beta`` x itself + (1 - ``beta``) x its cluster's mean.
    Published: c=8, tau=0.9, d=0.4, p=4, beta=0.6 (Qwen2.5-VL script: tau=0.84). Images are refused (``media``)."""

    name = "fastvid"
    paper = "arXiv:2503.11187"
    title = "FastVID: Dynamic Density Pruning for Fast Video Large Language Models"
    deviation = (
        "exact budget split over segments by size; a token joins one peak of its segment, not one per anchor frame; "
        "peaks chosen over a segment's anchor frames together; ties to the earlier token; no frame de-duplication"
    )
    needs = frozenset({"vision_attention"})
    media = frozenset({"video"})
    segments: int = 8
    tau: float = 0.9
    contextual: float = 0.4
    anchor_every: int = 4
    beta: float = 0.6

    def validate(self) -> None:
        if self.segments < 1 or self.anchor_every < 1 or not 0 <= self.contextual <= 1 or not 0 <= self.beta <= 1:
            raise PolicyError(f"{self}: segments, anchor_every must be >= 1 and contextual, beta in [0, 1]")
        if self.at_layer:
            raise PolicyError(f"{self.name}: merges tokens, which a choice inside the tower cannot do; drop at_layer")

    def vision_layers(self, info: ModelInfo) -> list[int]:
        return [info.vision_layers - 1]  # salience: the attention the last tower layer gives each token

    def select(self, item: VisualItem) -> VisualSelection:
        n, total = item.num_tokens, self.budget(item)
        if total == n:
            return VisualSelection(torch.arange(n))
        frames, x = item.grid[0], item.features.float()
        segment = selection.temporal_segments(x.view(frames, -1, x.shape[1]).mean(dim=1), self.segments, self.tau).cpu()
        counts = torch.bincount(segment)  # frames per segment (a frame's tokens: n // frames)
        share = selection.split_proportionally(total, counts)
        peaks = torch.where(share > 0, (share * self.contextual).long().clamp(min=int(self.contextual > 0)), 0)
        attention = item.signals["vision_attention"].float().cpu().view(frames, -1)
        quota = selection.spread_evenly(share - peaks, segment)  # salient tokens per frame
        chosen = selection.top_k_mask(attention, torch.ones_like(attention, dtype=torch.bool), quota).flatten()
        token_segment = segment.repeat_interleave(n // frames)
        anchor = (counts.cumsum(dim=0)[segment] - 1 - torch.arange(frames)) % self.anchor_every == 0
        candidates = selection.preferred_groups(token_segment, ~chosen, anchor.repeat_interleave(n // frames), peaks)
        centres = selection.grouped_density_peaks(x, candidates, peaks, 4)
        keep = torch.cat([chosen.nonzero().flatten(), centres]).sort().values
        sources = selection.join_nearest(x, keep, centres, token_segment)
        merged, slots = selection.merge_rows(x, sources, len(keep)), sources[centres]
        merged[slots] = self.beta * x[centres] + (1 - self.beta) * merged[slots]
        return VisualSelection(keep, merged, sources)
