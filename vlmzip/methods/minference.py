"""MInference (vertical-slash): each head's blocks from the columns and diagonals its last 64 queries attend to most."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.sparse import Layout, last_rows_scores, vertical_slash_blocks
from vlmzip.stages import PromptLayer, SparseAttention


@register_method
@dataclass(frozen=True)
class MInference(SparseAttention):
    """ "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention" (vertical-slash).

    Per layer and head, the softmax attention of the last ``last_q`` queries scores every key (summed over those
    queries: vertical) and every diagonal offset (slash); the ``vertical`` top keys (the first 30 among them) and the
    ``slash`` top diagonals (the nearest 100 among them) are computed, rounded up to the ``block x block`` blocks
    holding them. Published: last 64 queries, 1000 vertical and 6096 slash lines (the default pattern of heads
    without a searched configuration), 64x64 blocks in the reference kernel.
    """

    name = "minference"
    paper = "arXiv:2407.02490"
    title = "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention"
    deviation = (
        "one vertical-slash pattern for every head (no offline per-head pattern search); the lines are rounded up to "
        "the kernel's blocks, so more is computed than the element-level kernel does; prompts under min_length dense"
    )
    vertical: int = 1000
    slash: int = 6096
    last_q: int = 64

    def validate(self) -> None:
        super().validate()
        if self.vertical < 1 or self.slash < 1 or self.last_q < 1:
            raise PolicyError(
                f"minference: vertical, slash and last_q must be >= 1 (got {self.vertical}, "
                f"{self.slash}, {self.last_q})"
            )

    def choose(
        self,
        layer: PromptLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        layout: Layout,
        candidates: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        vertical, slash = last_rows_scores(query, key, layout, self.last_q, scale)
        index = torch.arange(query.shape[2], device=query.device)
        real = index[None, None, :] < layout.lengths[:, None, None]
        columns = _top(vertical, real, index < min(30, self.vertical), self.vertical)
        return vertical_slash_blocks(columns, _top(slash, real, index < min(100, self.slash), self.slash), self.block)


def _top(scores: torch.Tensor, real: torch.Tensor, forced: torch.Tensor, count: int) -> torch.Tensor:
    """The ``forced`` lines and the highest-scoring others, ``count`` in all, among the ``real`` ones (no ties
    broken by the tensor's length: a sample selects the same lines alone as in a batch)."""
    forced = forced & real
    rest = torch.where(real & ~forced, scores, -1.0)
    top = rest.topk(min(count, scores.shape[-1]), dim=-1)
    rank = torch.arange(top.indices.shape[-1], device=scores.device)
    take = (top.values >= 0) & (rank < count - forced.sum(dim=-1, keepdim=True))
    return forced | torch.zeros_like(real.expand_as(scores)).scatter(-1, top.indices, take)
