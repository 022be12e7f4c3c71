"""Attention masks for rows that were cut or entries that were evicted, in the model's own mask format.

Formats follow the attention backend: ``sdpa`` takes a bool ``[B, 1, q, kv]`` mask (or ``None`` for plain
causal), ``eager`` an additive float mask, flash attention a 2D ``[B, kv]`` padding mask (or ``None``).
Masks are built with transformers' own mask functions (``AttentionMaskInterface``), so a new backend that
registers one works here too.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    and_masks,
    causal_mask_function,
    sliding_window_causal_mask_function,
)

from vlmzip.selection import gather_rows


def layer_mask(
    impl: str,
    kv_valid: torch.Tensor,
    query_length: int,
    sliding_window: int | None,
    dtype: torch.dtype,
    config,
    kv_positions: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Causal (optionally sliding-window) mask of ``query_length`` new rows over ``kv_valid [B, kv]`` entries.

    The queries are the last ``query_length`` entries; all earlier entries are in the past. Causality is
    counted in stored-entry space; the window too, unless ``kv_positions [B, kv]`` (each entry's sequence
    position) is given: then it is measured in positions, as the prefill mask measured it, so cut or evicted
    entries do not pull older ones into the window. (Flash attention applies its window itself, in entries.)
    """
    batch, kv_length = kv_valid.shape
    if sliding_window is None:
        mask_function = causal_mask_function
    elif kv_positions is None:
        mask_function = sliding_window_causal_mask_function(sliding_window)
    else:
        mask_function = and_masks(causal_mask_function, _window_in_positions(kv_positions, sliding_window))
    return ALL_MASK_ATTENTION_FUNCTIONS[impl](
        batch_size=batch,
        q_length=query_length,
        kv_length=kv_length,
        q_offset=kv_length - query_length,
        kv_offset=0,
        mask_function=mask_function,
        attention_mask=kv_valid.bool(),
        # a window in positions is no pattern sdpa's is_causal could stand in for
        allow_is_causal_skip=sliding_window is None or kv_positions is None,
        dtype=dtype,
        config=config,
        device=kv_valid.device,
    )


def _window_in_positions(positions: torch.Tensor, sliding_window: int):
    """Mask function: the entry lies within ``sliding_window`` positions of the query (itself an entry)."""

    def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
        return positions[batch_idx, kv_idx] > positions[batch_idx, q_idx] - sliding_window

    return inner_mask


def cut_mask(
    mask: torch.Tensor | None,
    index: torch.Tensor,
    valid: torch.Tensor,
    impl: str,
    sliding_window: int | None,
    dtype: torch.dtype,
    config,
) -> torch.Tensor | None:
    """The prefill mask restricted to rows ``index [B, L']`` (as queries and keys); padding rows masked.

    Slicing keeps whatever pattern the model built (bidirectional image blocks, sliding windows measured in
    original positions). A ``None`` mask meant plain causal attention without padding.
    """
    if mask is None:
        return layer_mask(impl, valid, valid.shape[1], sliding_window, dtype, config)
    if mask.dim() == 2:  # flash attention: a padding mask only
        kept = gather_rows(mask.bool(), index, dim=1) & valid
        return None if bool(kept.all()) else kept
    rows = gather_rows(mask, index, dim=2)
    cols = index.unsqueeze(1).unsqueeze(1).expand(rows.shape[0], rows.shape[1], rows.shape[2], -1)
    sliced = rows.gather(3, cols.to(rows.device))
    hidden = ~valid.to(sliced.device)[:, None, None, :]
    if sliced.dtype == torch.bool:
        return sliced & ~hidden
    return sliced.masked_fill(hidden, torch.finfo(sliced.dtype).min)
