"""MustDrop (prefill part): drop the visual tokens that no text token attends to, at several layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.budget import Keep, kept_count
from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.stages import Cut, ModelInfo, PrefillMethod, PromptRows, QueryAttention, scale_layers, validate_layers


@register_method
@dataclass(frozen=True)
class MustDrop(PrefillMethod):
    """ "Multi-Stage Vision Token Dropping: Towards Efficient Multimodal Large Language Model" (prefill part).

    Dual-attention filter: before each of ``layers``, a visual token is dropped when both the attention all
    instruction tokens pay it (summed, the global score) stays under ``global_threshold`` and the most any one
    of them pays it stays under ``individual_threshold``; at most ``keep`` (of the visual tokens the language
    model received) remain, the highest global scores first. Published: layers 2/6/10/14 of 32, thresholds
    0.011 and 0.01 (about 64 tokens kept on LLaVA-1.5).
    """

    name = "mustdrop"
    paper = "arXiv:2411.10803"
    title = "Multi-Stage Vision Token Dropping: Towards Efficient Multimodal Large Language Model"
    deviation = (
        "the prefill stage only (the spatial merge before the language model, `mustdrop-vision`, and the cache "
        "policy, `mustdrop-decode`, are separate methods); scored at the layer before each cut; layers for 32 "
        "layers scaled to the model's depth; `keep` caps the count (default: no cap) and at least one visual "
        "token stays"
    )
    layers: tuple[int, ...] = (2, 6, 10, 14)
    depth: int = 32
    global_threshold: float = 0.011
    individual_threshold: float = 0.01
    keep: Keep = 1.0

    def validate(self) -> None:
        validate_layers(self.name, self.layers, self.depth)
        if self.global_threshold < 0 or self.individual_threshold < 0:
            raise PolicyError("mustdrop: global_threshold and individual_threshold must be >= 0")

    def schedule(self, info: ModelInfo) -> tuple[Cut, ...]:
        return tuple(Cut(layer, self.keep, layer - 1) for layer in scale_layers(self.layers, self.depth, info))

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        return rows.instruction

    def score(self, cut: Cut, attention: QueryAttention, rows: PromptRows) -> torch.Tensor:
        """Tokens passing the filter score in [2, 3], the others in [0, 1]; both ranked by mean attention."""
        total = attention.probs.sum(dim=1)
        passes = (total >= self.global_threshold) | (attention.probs.amax(dim=1) >= self.individual_threshold)
        mean = total / attention.valid.sum(dim=1, keepdim=True).clamp(min=1)
        return mean + 2.0 * passes

    def budget(self, cut: Cut, rows: PromptRows, scores: torch.Tensor) -> list[int]:
        passing = ((scores >= 2.0) & rows.visual).sum(dim=1).tolist()
        caps = [kept_count(self.keep, n) for n in rows.visual_in]
        return [min(max(1, count), cap, held) for count, cap, held in zip(passing, caps, rows.visual_count)]
