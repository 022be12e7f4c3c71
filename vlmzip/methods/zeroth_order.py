"""Zeroth-order sensitivity (ZOO-Prune): keep the tokens the projector is most sensitive to, and not redundant."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.scoring import batched_projection_sensitivity
from vlmzip.selection import batched_greedy_diverse
from vlmzip.stages import VisionMethod, VisualItem, VisualSelection, greedy_by_size, unit_features


@register_method
@dataclass(frozen=True)
class ZerothOrder(VisionMethod):
    """ "Training-Free Token Pruning via Zeroth-Order Gradient Estimation in Vision-Language Models" (ZOO-Prune).

    A token's sensitivity is how far the projector's output moves when its input (the vision tower's output it
    is projected from) moves by ``epsilon`` of its norm along ``directions`` random directions, from forward
    passes only (all in one batched projector call). Tokens are then chosen greedily by sensitivity times
    ``1 - diversity * (highest cosine similarity to a token already chosen)``, so redundant ones wait.
    """

    name = "zeroth-order"
    paper = "arXiv:2509.24837"
    title = "Training-Free Token Pruning via Zeroth-Order Gradient Estimation in Vision-Language Models"
    deviation = (
        "no public code: directions, epsilon (relative to each token's norm, so bf16 rounding stays small beside "
        "it) and the multiplicative redundancy discount are vlmzip's choices; Gemma-3 perturbs each pooled 4x4 "
        "cell, Qwen each 2x2 merge group; redundancy by the projected features' cosine similarity"
    )
    needs = frozenset({"tower_features"})
    directions: int = 8
    epsilon: float = 0.05
    diversity: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.directions < 1:
            raise PolicyError(f"zeroth-order: directions={self.directions} must be >= 1 (random directions per token)")
        if not 0 < self.epsilon <= 1:
            raise PolicyError(f"zeroth-order: epsilon={self.epsilon} must be in (0, 1] (a share of each input's norm)")
        if not 0 <= self.diversity <= 1:
            raise PolicyError(f"zeroth-order: diversity={self.diversity} must be in [0, 1] (0: sensitivity alone)")

    def select_batch(self, items: list[VisualItem]) -> list[VisualSelection]:
        pruned = [item for item in items if self.budget(item) < item.num_tokens]
        inputs = [item.signals["tower_features"] for item in pruned]
        project = pruned[0].project if pruned else None
        found = batched_projection_sensitivity(project, inputs, self.directions, self.epsilon, self.seed)
        sensitivity = dict(zip(map(id, pruned), found))
        return greedy_by_size(self, items, lambda group, count: self._choose(group, count, sensitivity))

    def _choose(self, items: list[VisualItem], count: int, sensitivity: dict[int, torch.Tensor]) -> torch.Tensor:
        unit = unit_features(items)
        scores = torch.stack([sensitivity[id(item)] for item in items])
        return batched_greedy_diverse(scores, unit @ unit.mT, torch.full((len(items),), count), self.diversity)
