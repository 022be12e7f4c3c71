"""FlexPrefill: per head, query-aware blocks or a vertical-slash pattern, each up to a cumulative mass gamma."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.sparse import Layout, block_sum, cover, js_distance, last_rows_scores, line_blocks, pooled_scores
from vlmzip.stages import PromptLayer, SparseAttention


@register_method
@dataclass(frozen=True)
class FlexPrefill(SparseAttention):
    """ "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient Long-Sequence Inference".

    The last ``block`` queries' attention, summed per key block, is compared with the estimate of block-mean queries
    over block-mean keys (square root of the Jensen-Shannon divergence): below ``tau`` the head is query-aware and
    every query block keeps the fewest key blocks of its pooled estimate holding ``gamma`` of it; otherwise the head
    is vertical-slash: the fewest key blocks and block diagonals holding ``gamma`` of the last queries' attention.
    Either keeps at least ``min_budget`` tokens' worth of blocks. Published: gamma 0.9, tau 0.1, min_budget 1024,
    128x128 blocks.
    """

    name = "flexprefill"
    paper = "arXiv:2502.20766"
    title = "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient Long-Sequence Inference"
    deviation = "vertical and slash lines are chosen by block (as the reference code does); selection in plain torch"
    gamma: float = 0.9
    tau: float = 0.1
    min_budget: int = 1024

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.gamma <= 1.0:
            raise PolicyError(f"flexprefill: gamma={self.gamma} must be in (0, 1] (published: 0.9)")
        if not 0.0 <= self.tau <= 1.0 or self.min_budget < 0:
            raise PolicyError(f"flexprefill: tau={self.tau} must be in [0, 1] and min_budget={self.min_budget} >= 0")

    def choose(
        self,
        layer: PromptLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        layout: Layout,
        candidates: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        vertical, slash = last_rows_scores(query, key, layout, self.block, scale)
        vertical, slash = block_sum(vertical, self.block), block_sum(slash, self.block)  # [B, H, n]
        pooled = pooled_scores(query, key, layout, self.block, scale)  # [B, H, n, n]
        last = ((layout.lengths - 1) // self.block)[:, None, None, None].expand(-1, pooled.shape[1], 1, pooled.shape[3])
        query_aware = js_distance(pooled.gather(2, last)[:, :, 0], vertical) < self.tau  # [B, H]
        least = -(-self.min_budget // self.block)
        index = torch.arange(vertical.shape[-1], device=query.device)
        real = (index[None, :] * self.block < layout.lengths[:, None])[:, None]  # [B, 1, n]
        columns = cover(vertical, real, self.gamma, least) | (index == 0)
        diagonals = cover(slash, real, self.gamma, least) | (index == 0)
        aware = cover(pooled, candidates, self.gamma, least)
        return torch.where(query_aware[..., None, None], aware, line_blocks(columns, diagonals))
