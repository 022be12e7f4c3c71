"""text-relevance: keep the visual tokens most relevant to the question (OpenCLIP text-image similarity, or the
language model's own text embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.registry import register_method
from vlmzip.relevance import RelevanceMethod
from vlmzip.stages import VisualItem, VisualSelection, by_size, unit_features


@register_method
@dataclass(frozen=True)
class TextRelevance(RelevanceMethod):
    """ "Less is More: A Simple yet Effective Token Reduction Method for Efficient Multi-modal LLMs" (TRIM).

    Scores each visual token by its relevance to the sample's question and keeps the ``keep`` most relevant, in
    their original order. ``clip=DIR`` names an OpenCLIP model (a local directory: ``open_clip_config.json`` and
    its weights; needs ``pip install 'vlmzip[openclip]'``): the cosine of the question's CLIP text embedding with
    the item's CLIP patch embeddings pooled to the model's token grid (TRIM's score; CDPruner's relevance term,
    arXiv:2506.10967). Without it: the mean cosine of the token's features with the sample's text token embeddings
    in the language model. TRIM publishes no fixed budget (it keeps the IQR outliers, ~21% of LLaVA-1.5's tokens).
    """

    name = "text-relevance"
    paper = "arXiv:2409.10994"
    title = "Less is More: A Simple yet Effective Token Reduction Method for Efficient Multi-modal LLMs"
    deviation = (
        "keeps a fixed `keep` of the highest scores instead of TRIM's interquartile-range outliers, and adds no "
        "token averaging the rest; the question is the text after the sample's last visual token; the CLIP reads "
        "the frames the VLM's tower saw, squashed (not cropped) to its input so that its patches keep their place; "
        "without `clip`, the language model's text embeddings stand in for CLIP's"
    )

    def select_batch(self, items: list[VisualItem]) -> list[VisualSelection]:
        return by_size(items, self._same_size)

    def _same_size(self, items: list[VisualItem]) -> list[VisualSelection]:
        count = self.budget(items[0])
        if count == items[0].num_tokens:
            return [VisualSelection(torch.arange(count)) for _ in items]
        scores = self.relevance(items, unit_features(items)).float().cpu()
        return [VisualSelection(s.argsort(descending=True, stable=True)[:count].sort().values) for s in scores]
