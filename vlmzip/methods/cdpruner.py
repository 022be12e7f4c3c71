"""CDPruner: keep the visual tokens of a conditional DPP (diverse and relevant to the instruction), greedy MAP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vlmzip.registry import register_method
from vlmzip.selection import greedy_dpp
from vlmzip.stages import VisionMethod, VisualItem, VisualSelection


@register_method
@dataclass(frozen=True)
class CDPruner(VisionMethod):
    """ "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs" (CDPruner).

    Each token's relevance to the instruction is its mean cosine similarity to the sample's text embeddings,
    min-max normalised to [0, 1]; the kernel ``L = diag(q) S diag(q)`` weighs the tokens' cosine similarity ``S``
    by it; the ``keep`` tokens are its greedy MAP (fast greedy DPP by incremental Cholesky). No attention is
    needed. Published: LLaVA-1.5-7B keeps 95-96% of its accuracy at 64 of 576 tokens.
    """

    name = "cdpruner"
    paper = "arXiv:2506.10967"
    title = "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs"
    deviation = (
        "relevance from the language model's own embeddings of the prompt's text tokens (all of them, template "
        "included) against the projected visual tokens, where the reference uses the vision encoder's text tower "
        "(CLIP) where there is one; once the kernel's rank is spent, the rest go by relevance"
    )
    needs = frozenset({"text_embeddings"})

    def select(self, item: VisualItem) -> VisualSelection:
        count = self.budget(item)
        if count == item.num_tokens:
            return VisualSelection(torch.arange(count))
        unit = F.normalize(item.features.double(), dim=-1)
        text = F.normalize(item.signals["text_embeddings"].to(unit), dim=-1)
        relevance = (unit @ text.T).mean(dim=1) if len(text) else unit.new_ones(len(unit))
        span = relevance.max() - relevance.min()
        quality = (relevance - relevance.min()) / span if span > 0 else torch.ones_like(relevance)
        kernel = quality[:, None] * (unit @ unit.T) * quality[None, :]
        return VisualSelection(greedy_dpp(kernel, count).cpu().sort().values)
