"""DART: keep the visual tokens least duplicated with a few pivot tokens; no attention weights needed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.selection import gather_rows, pack_left, top_k_mask
from vlmzip.stages import Cut, ModelInfo, OneCutMethod, PromptRows, QueryAttention


@register_method
@dataclass(frozen=True)
class Dart(OneCutMethod):
    """ "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More" (DART).

    Before layer ``layer`` the ``pivots`` visual and ``text_pivots`` instruction tokens with the largest
    hidden-state norm become pivots; every other visual token is scored by its highest cosine similarity to a
    pivot, and the ``keep`` least duplicated (the visual pivots first) remain. Needs no attention weights, so
    it runs with every backend. Published defaults: layer 2, 4 + 4 pivots (here ``keep=0.5``).
    """

    name = "dart"
    paper = "arXiv:2502.11494"
    title = "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More"
    deviation = (
        "pivots are the tokens with the largest hidden-state norm entering the cut layer (the reference ranks "
        "keys by norm); a token's duplication is its highest similarity to any pivot, where the reference gives "
        "each pivot an equal share of the budget"
    )
    pivots: int = 4
    text_pivots: int = 4

    def validate(self) -> None:
        super().validate()
        if self.pivots < 1 or self.text_pivots < 0:
            raise PolicyError(f"dart: pivots={self.pivots} must be >= 1 and text_pivots={self.text_pivots} >= 0")

    def schedule(self, info: ModelInfo) -> tuple[Cut, ...]:
        return (Cut(self.layer, self.keep, None),)

    def score(self, cut: Cut, attention: QueryAttention | None, rows: PromptRows) -> torch.Tensor:
        hidden = rows.hidden.float()
        norms = hidden.norm(dim=-1)
        visual = top_k_mask(norms, rows.visual, torch.full((len(norms),), self.pivots))
        text = top_k_mask(norms, rows.instruction, torch.full((len(norms),), self.text_pivots))
        index, valid = pack_left(visual | text)
        unit = F.normalize(hidden, dim=-1)
        similarity = unit @ gather_rows(unit, index, dim=1).transpose(1, 2)  # [B, L, pivots]
        duplication = similarity.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=-1)
        return torch.where(visual, float("inf"), -duplication)
