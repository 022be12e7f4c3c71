"""CDPruner: keep the visual tokens of a conditional DPP (diverse and relevant to the instruction), greedy MAP."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.registry import register_method
from vlmzip.relevance import RelevanceMethod
from vlmzip.selection import batched_greedy_dpp
from vlmzip.stages import VisualItem, VisualSelection, greedy_by_size, unit_features


@register_method
@dataclass(frozen=True)
class CDPruner(RelevanceMethod):
    """ "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs" (CDPruner).

    Each token's relevance to the instruction (``vlmzip.relevance``) is the cosine of its CLIP patch embeddings with
    the question's CLIP text embedding where ``clip=DIR`` names an OpenCLIP model (as the paper), else its mean
    cosine similarity to the sample's text embeddings in the language model, min-max normalised to [0, 1]; the
    kernel ``L = diag(q) S diag(q)`` weighs the tokens' cosine similarity ``S``
    by it; the ``keep`` tokens are its greedy MAP (fast greedy DPP by incremental Cholesky). No attention is
    needed. Published: LLaVA-1.5-7B keeps 95-96% of its accuracy at 64 of 576 tokens.
    """

    name = "cdpruner"
    paper = "arXiv:2506.10967"
    title = "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs"
    deviation = (
        "without `clip`, relevance from the language model's own embeddings of the prompt's text tokens (all of "
        "them, template included) against the projected visual tokens, where the reference uses a CLIP text tower; "
        "with `clip=DIR` (an OpenCLIP model) the CLIP's final patch tokens in its joint space, pooled to the model's "
        "token grid, against the question after the last visual token, not negated as the reference's LLaVA code "
        "does; once the kernel's rank is spent, the rest go by relevance"
    )

    def select_batch(self, items: list[VisualItem]) -> list[VisualSelection]:
        return greedy_by_size(self, items, self._choose)

    def _choose(self, items: list[VisualItem], count: int) -> torch.Tensor:
        unit = unit_features(items, torch.float64)
        relevance = self.relevance(items, unit)
        low = relevance.amin(dim=1, keepdim=True)
        span = relevance.amax(dim=1, keepdim=True) - low
        quality = torch.where(span > 0, (relevance - low) / span, 1.0)  # no host round trip per item
        kernel = quality[:, :, None] * (unit @ unit.mT) * quality[:, None, :]
        return batched_greedy_dpp(kernel, torch.full((len(items),), count))
