"""Block-sparse prefill attention: each query block attends only the key blocks listed for it.

The prompt pass's attention ``query [B, Hq, S, d]`` over ``key``/``value [B, Hkv, S, d]`` (grouped-query: ``Hq``
a multiple of ``Hkv``, query head ``h`` reads key head ``h // (Hq // Hkv)``), the sequence cut into query blocks
of ``block_q`` rows and key blocks of ``block_k`` columns (the last of each may be short). ``block_mask [B, Hq or
1, ceil(S / block_q), ceil(S / block_k)]`` (bool) lists the key blocks each query block computes; a key outside
them is skipped as if masked. Inside a listed block the element mask still holds:

* row ``i`` of sample ``b`` sees column ``j`` when ``key_start[b] <= j <= key_end[b, i]`` (``key_start [B]``: the
  first real column, left padding before it; default 0. ``key_end [B, S]``: the last column a row sees, default
  ``i``: causal; a larger value lets a row see later keys, as Gemma-3's image tokens see their whole image);
* and, with ``window``, ``j > i - window`` (a sliding-window layer).

Logits are ``query @ key * scale``; a row that sees no key returns zeros. Output ``[B, Hq, S, d]`` in the query's
dtype. Every block listed (the whole grid) is dense attention under the same element mask.

``block_sparse_attention_reference`` builds the element mask and runs a softmax in fp32, one head at a time (small
sizes: tests and the CPU). ``block_sparse_attention`` dispatches; until the kernel lands it runs the reference.
"""

from __future__ import annotations

import torch

__all__ = ["block_grid", "block_sparse_attention", "block_sparse_attention_reference", "check_block_sparse"]


def block_grid(length: int, block_q: int = 128, block_k: int = 128) -> tuple[int, int]:
    """The number of query blocks and key blocks of a ``length``-token prompt."""
    return -(-length // block_q), -(-length // block_k)


def check_block_sparse(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_mask: torch.Tensor,
    block_q: int,
    block_k: int,
    key_start: torch.Tensor | None,
    key_end: torch.Tensor | None,
    window: int | None,
) -> None:
    """Raise ``ValueError`` naming the first argument whose shape or value does not fit the others."""
    if query.dim() != 4 or key.shape != value.shape or key.dim() != 4:
        raise ValueError(f"query [B, Hq, S, d] and key/value [B, Hkv, S, d] expected, got {query.shape}, {key.shape}")
    batch, heads, length, _ = query.shape
    if key.shape[0] != batch or key.shape[2] != length or heads % key.shape[1]:
        raise ValueError(
            f"key {tuple(key.shape)} does not fit query {tuple(query.shape)} (Hq must be a multiple of Hkv)"
        )
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name}={size}: block sizes must be powers of two >= 16 (e.g. 64 or 128)")
    grid = block_grid(length, block_q, block_k)
    if block_mask.dtype != torch.bool or block_mask.dim() != 4 or block_mask.shape[0] != batch:
        raise ValueError(
            f"block_mask must be bool [B, Hq or 1, {grid[0]}, {grid[1]}], got {block_mask.dtype} "
            f"{tuple(block_mask.shape)}"
        )
    if block_mask.shape[1] not in (1, heads) or tuple(block_mask.shape[2:]) != grid:
        raise ValueError(
            f"block_mask {tuple(block_mask.shape)} does not fit {length} tokens in blocks of "
            f"{block_q}x{block_k}: expected [{batch}, {heads} or 1, {grid[0]}, {grid[1]}]"
        )
    if key_start is not None and tuple(key_start.shape) != (batch,):
        raise ValueError(f"key_start must be [B] = [{batch}], got {tuple(key_start.shape)}")
    if key_end is not None and tuple(key_end.shape) != (batch, length):
        raise ValueError(f"key_end must be [B, S] = [{batch}, {length}], got {tuple(key_end.shape)}")
    if window is not None and window < 1:
        raise ValueError(f"window={window}: a sliding window holds at least one key")


def element_mask(
    block_mask: torch.Tensor,
    length: int,
    block_q: int,
    block_k: int,
    key_start: torch.Tensor | None,
    key_end: torch.Tensor | None,
    window: int | None,
) -> torch.Tensor:
    """The ``[B, Hq or 1, S, S]`` bool mask the arguments stand for (the reference's; O(S^2) memory)."""
    device = block_mask.device
    rows = torch.arange(length, device=device)
    blocks = block_mask.repeat_interleave(block_q, dim=2)[:, :, :length]
    blocks = blocks.repeat_interleave(block_k, dim=3)[:, :, :, :length]
    end = rows.expand(block_mask.shape[0], length) if key_end is None else key_end.to(device)
    start = torch.zeros(block_mask.shape[0], dtype=torch.long, device=device) if key_start is None else key_start
    allowed = (rows[None, None, :] <= end[:, :, None]) & (rows[None, None, :] >= start.to(device)[:, None, None])
    if window is not None:
        allowed &= rows[None, None, :] > rows[None, :, None] - window
    return blocks & allowed[:, None]


def block_sparse_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    scale: float | None = None,
    block_q: int = 128,
    block_k: int = 128,
    key_start: torch.Tensor | None = None,
    key_end: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Softmax attention under the block and element masks, in fp32, one query head at a time."""
    check_block_sparse(query, key, value, block_mask, block_q, block_k, key_start, key_end, window)
    batch, heads, length, dim = query.shape
    scale = dim**-0.5 if scale is None else scale
    group = heads // key.shape[1]
    mask = element_mask(block_mask, length, block_q, block_k, key_start, key_end, window)
    out = torch.empty_like(query)
    for head in range(heads):
        q = query[:, head].float()
        k, v = key[:, head // group].float(), value[:, head // group].float()
        seen = mask[:, head if mask.shape[1] > 1 else 0]
        logits = (q @ k.transpose(-1, -2) * scale).masked_fill(~seen, float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row that sees nothing: zeros
        out[:, head] = (probs @ v).to(query.dtype)
    return out


def block_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    scale: float | None = None,
    block_q: int = 128,
    block_k: int = 128,
    key_start: torch.Tensor | None = None,
    key_end: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Block-sparse attention (the module docstring has the contract)."""
    return block_sparse_attention_reference(
        query,
        key,
        value,
        block_mask,
        scale=scale,
        block_q=block_q,
        block_k=block_k,
        key_start=key_start,
        key_end=key_end,
        window=window,
    )
