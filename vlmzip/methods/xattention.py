"""XAttention: blocks chosen by antidiagonal scoring of strided tiles, up to a cumulative-attention threshold."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.sparse import Layout, antidiagonal_scores, cover
from vlmzip.stages import PromptLayer, SparseAttention


@register_method
@dataclass(frozen=True)
class XAttention(SparseAttention):
    """ "XAttention: Block Sparse Attention with Antidiagonal Scoring" (Xu et al., 2025).

    Queries and keys are cut into ``stride x stride`` tiles; a tile is scored by the sum of its antidiagonal's
    logits (scaled by ``1 / stride``), softmaxed over the causal tiles of its row; summed over each ``block x block``
    block, the scores give every query block the fewest key blocks, highest first, that hold ``threshold`` of its
    row's total (per head). Published: stride 8 (16 for video generation), threshold 0.9, 128x128 blocks.
    ``threshold=1`` computes every block.
    """

    name = "xattention"
    paper = "arXiv:2503.16428"
    title = "XAttention: Block Sparse Attention with Antidiagonal Scoring"
    deviation = "the estimate runs in plain torch (chunked matmuls), where the paper fuses it in Triton"
    threshold: float = 0.9
    stride: int = 8

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.threshold <= 1.0:
            raise PolicyError(f"xattention: threshold={self.threshold} must be in (0, 1] (published: 0.9)")
        if self.stride < 1 or self.stride & (self.stride - 1) or self.stride > self.block:
            raise PolicyError(
                f"xattention: stride={self.stride} must be a power of two no larger than block={self.block} "
                "(published: 8)"
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
        if self.threshold >= 1.0:
            return candidates
        scores = antidiagonal_scores(query, key, layout, self.stride, self.block, scale)
        return cover(scores, candidates, self.threshold)
