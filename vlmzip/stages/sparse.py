"""Block-sparse prefill on the prefill contract: a method that supplies the prompt pass's attention by choosing,
per sample, head and query block, the key blocks it computes (``SparseAttention``).

The method derives from ``SparseAttention`` and defines ``choose``; ``attend`` does the rest for every prompt-pass
layer: reads the layer's mask as kernel bounds (``vlmzip.sparse.mask_layout``; a mask they cannot express runs the
model's own attention, counted dense), puts every sample's real rows first (so blocks start at its first token and a
sample gets the same blocks in any batch as alone), adds the blocks every method keeps (the diagonal and the first
key block, the attention sink), runs ``vlmzip.kernels.block_sparse_attention`` and records the density reached
(``stats.attention_density``). Prompts shorter than ``min_length`` run dense: a layer whose samples are all shorter
runs the model's own attention, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vlmzip.errors import PolicyError
from vlmzip.kernels.block_sparse_attention import block_sparse_attention
from vlmzip.sparse import Layout, block_density, candidate_blocks, forced_blocks, mask_layout
from vlmzip.stages.prefill import PrefillMethod, PromptLayer

#: the block sizes the GPU kernel is tuned for; smaller powers of two (>= 16) serve tests on tiny prompts
TUNED_BLOCKS = (64, 128)


@dataclass(frozen=True)
class SparseAttention(PrefillMethod):
    """Block-sparse attention for the prompt pass; subclasses define ``choose``.

    ``min_length``: prompts with fewer real tokens run dense (provisional 8192: to be set from the GPU crossover,
    where the sparse kernel and its selection overtake SDPA). ``block``: the square block size of the selection and
    the kernel (64 or 128 on a GPU; any power of two >= 16 is accepted, for tests on short prompts).
    """

    min_length: int = 8192
    block: int = 128

    def validate(self) -> None:
        if self.block < 16 or self.block & (self.block - 1):
            raise PolicyError(
                f"{self.name}: block={self.block} must be a power of two >= 16 (the kernel's sizes are 64 and 128)"
            )
        if self.min_length < 0:
            raise PolicyError(f"{self.name}: min_length={self.min_length} must be >= 0 (0: sparse at any length)")

    def choose(
        self,
        layer: PromptLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        layout: Layout,
        candidates: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """The key blocks each query block computes, ``[B, Hq or 1, n, n]`` bool, from rows-first ``query [B, Hq, S,
        d]`` and ``key [B, Hkv, S, d]``; ``candidates [B, 1, n, n]`` are the blocks holding any visible pair (what
        is chosen outside them is dropped; the diagonal and first key block are added)."""
        raise NotImplementedError(f"{type(self).__name__} must define choose(...)")

    def attend(
        self, layer: PromptLayer, base, module, query, key, value, attention_mask, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        length = query.shape[2]
        short = [n < self.min_length for n in layer.lengths]
        if all(short) or key.shape[2] != length or kwargs.get("softcap") is not None:
            return base(module, query, key, value, attention_mask, **kwargs)
        window = kwargs.get("sliding_window") or layer.window
        layout = mask_layout(attention_mask, layer.rows.valid, window)
        if layout is None:  # a mask the kernel's bounds cannot express: the model's own attention
            return base(module, query, key, value, attention_mask, **kwargs)
        scale = kwargs.get("scaling") or getattr(module, "scaling", None) or query.shape[-1] ** -0.5
        query, key, value = (layout.rows_first(x) for x in (query, key, value))
        candidates = candidate_blocks(layout, length, self.block)
        chosen = self.choose(layer, query, key, layout, candidates, scale)
        if any(short):  # samples below min_length: every block (dense, in the kernel)
            dense = torch.tensor(short, device=chosen.device)[:, None, None, None]
            chosen = chosen | dense
        chosen = (chosen | forced_blocks(candidates)) & candidates
        out = block_sparse_attention(
            query,
            key,
            value,
            chosen,
            scale=scale,
            block_q=self.block,
            block_k=self.block,
            key_end=layout.key_end,
            window=layout.window,
        )
        layer.record(block_density(chosen.expand(-1, query.shape[1], -1, -1), candidates))
        return layout.layer_order(out).transpose(1, 2).contiguous(), None
