"""Attention-derived token scores, computed without materialising the full attention matrix.

Plain-torch reference implementations; fused kernels (``vlmzip.kernels``) must match them.
"""

from __future__ import annotations

import torch


def attention_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    mask: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Mean softmax attention each key receives from a set of queries, averaged over heads and queries.

    query: ``[B, H, Q, d]`` (post-RoPE); key: ``[B, Hkv, K, d]`` with ``H % Hkv == 0`` (grouped-query
    attention is expanded here); mask: broadcastable to ``[B, 1|H, Q, K]``, bool (True = may attend) or
    additive float, or None. Returns ``[B, K]`` float32 whose rows sum to 1 (for queries with at least one
    visible key). Memory is ``O(B * H * chunk_size * K)``: queries are processed in chunks.
    """
    total = torch.zeros(query.shape[0], key.shape[2], dtype=torch.float32, device=query.device)
    for probs in _probs(query, key, scaling, mask, softcap, chunk_size):
        total += probs.sum(dim=(1, 2))
    return total / (query.shape[1] * query.shape[2])


def attention_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    mask: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Head-averaged softmax attention of every query over every key, ``[B, Q, K]`` float32.

    Same arguments as ``attention_mass``; for a few query rows (a prompt's text tokens), where each row's own
    distribution matters (maxima, per-query thresholds), not only their mean.
    """
    # summed then divided, as attention_mass does, so one query's row is bit-identical to its mass
    parts = [probs.sum(dim=1) / query.shape[1] for probs in _probs(query, key, scaling, mask, softcap, chunk_size)]
    if not parts:
        return torch.zeros(query.shape[0], 0, key.shape[2], dtype=torch.float32, device=query.device)
    return torch.cat(parts, dim=1)


def _probs(query, key, scaling, mask, softcap, chunk_size):
    """Yield the softmax probabilities ``[B, H, q, K]`` of each chunk of the queries (rows with no visible
    key all zero)."""
    heads, queries = query.shape[1], query.shape[2]
    groups = heads // key.shape[1]
    key = key.float().repeat_interleave(groups, dim=1) if groups > 1 else key.float()
    for start in range(0, queries, chunk_size):
        stop = min(start + chunk_size, queries)
        logits = torch.matmul(query[:, :, start:stop].float(), key.transpose(-1, -2)) * scaling
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if mask is not None:
            part = mask[..., start:stop, :] if mask.shape[-2] == queries else mask
            if part.dtype == torch.bool:
                logits = logits.masked_fill(~part, float("-inf"))
            else:
                logits = logits + part.float()
        yield torch.softmax(logits, dim=-1).nan_to_num(0.0)
