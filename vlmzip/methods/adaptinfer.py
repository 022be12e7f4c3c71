"""AdaptInfer: visual tokens ranked by text-to-visual attention, weighted by each text token's text-to-text weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.registry import register_method
from vlmzip.stages import EquivalentSchedule, PromptRows, QueryAttention, ScheduleCut


@register_method
@dataclass(frozen=True)
class AdaptInfer(EquivalentSchedule):
    """ "AdaptInfer: Adaptive Token Pruning for Vision-Language Model Inference with Dynamical Text Guidance"
    (weiczh02/AdaptInfer-base).

    At the layer before each cut, the instruction tokens' head-averaged attention among themselves weighs each of
    them: the attention it receives from the others plus the attention it pays to them (its own counted once),
    normalised over the instruction; a visual token's score is the weighted sum of the attention the instruction
    tokens pay it. Published: cuts at layers 1/10/20 of 32 with budgets [133, 27, 3] for 64 equivalent tokens of
    576 and [290, 72, 18] for 128; ``keep`` is the equivalent tokens (default 64).
    """

    name = "adaptinfer"
    paper = "arXiv:2508.06084"
    title = "AdaptInfer: Adaptive Token Pruning for Vision-Language Model Inference with Dynamical Text Guidance"
    deviation = (
        "weights and scores come from head-averaged attention (the reference weighs and sums each head's); cuts come "
        "before layers 1/10/20 scored by the layer before (the reference scores layer 1 and cuts after it); the "
        "published budgets nearest `keep` are scaled so the mean over layers is exactly `keep`; layers for 32 "
        "layers scaled to the model's depth"
    )
    budgets = {64: (133, 27, 3), 128: (290, 72, 18)}
    layers: tuple[int, ...] = (1, 10, 20)

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        return rows.instruction

    def score(self, cut: ScheduleCut, attention: QueryAttention, rows: PromptRows) -> torch.Tensor:
        probs, valid = attention.probs, attention.valid.float()
        among = probs.gather(2, attention.rows[:, None, :].expand(-1, probs.shape[1], -1)) * valid[:, None]
        weight = (among.sum(dim=1) + among.sum(dim=2) - among.diagonal(dim1=1, dim2=2)) * valid  # [B, Q]
        weight = weight / weight.sum(dim=1, keepdim=True).clamp(min=1e-12)
        return (weight[:, :, None] * probs).sum(dim=1)
