"""Attention mass: the softmax attention a set of query rows puts on every key, averaged over heads.

Two uses, one signature:

* **all rows** of a vision tower without [CLS] (SigLIP, Qwen's ViT) as queries, ``per_query=False``: the
  ``[B, K]`` attention each patch receives, summed (``reduce="sum"``) or averaged (``"mean"``) over the
  queries — ``Q = K`` up to thousands per image, windows packed by segment ids;
* **a few rows** of the language model (last token, text tokens), ``per_query=True``: ``[B, Q, K]``, each
  row's head-averaged distribution.

``attention_mass_reference`` is plain torch, chunked over queries (``O(B * H * chunk_size * K)`` memory); it
is what ``vlmzip.scoring`` runs on the CPU, and it computes exactly what scoring always computed, so CPU
results do not move. ``attention_mass_triton`` gives the same numbers within rounding without ever holding
the ``[Q, K]`` matrix: a first pass over key blocks keeps each row's softmax maximum and normaliser, a second
recomputes the logits and accumulates probabilities (``_attention_mass_triton``). Extra memory is the two
``[B, H, Q]`` row statistics and the output.

Masks are all optional; a key is visible to a query when every given mask allows it, and a query that sees
no key contributes zeros:

* ``query_positions [B, Q]`` (int): causal, key ``j`` visible iff ``j <= query_positions[b, q]``; with
  ``window``, also iff ``j > query_positions[b, q] - window`` (sliding-window layers);
* ``key_valid [B, K]`` (bool): padding;
* ``query_segments [B, Q]`` and ``key_segments [B, K]`` (int): visible only within equal ids — block or
  bidirectional masks, and packed layouts such as the per-frame or per-window chunks of ``cu_seqlens``;
* ``mask``, broadcastable to ``[B, 1|H, Q, K]``: a dense mask the model already built (bool, True =
  visible, or additive float), for the few-rows case.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from types import ModuleType

import torch


def attention_mass_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    *,
    softcap: float | None = None,
    query_positions: torch.Tensor | None = None,
    window: int | None = None,
    key_valid: torch.Tensor | None = None,
    query_segments: torch.Tensor | None = None,
    key_segments: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    per_query: bool = False,
    reduce: str = "mean",
    log_normalizer: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Softmax attention of the queries over the keys, head-averaged; computed in fp32.

    query ``[B, H, Q, d]`` (post-RoPE), key ``[B, Hkv, K, d]`` with ``H % Hkv == 0`` (grouped-query attention);
    logits are ``query @ key * scaling``, then ``tanh(logits / softcap) * softcap`` when ``softcap`` is given
    (Gemma), then the masks (module docstring). Returns ``[B, Q, K]`` float32 when ``per_query``; otherwise
    ``[B, K]`` float32, the sum over queries (``reduce="sum"``) or its mean over the ``Q`` queries (``"mean"``:
    rows sum to 1 when every query sees a key). ``log_normalizer [B, H, Q]``, when the attention call already
    computed it (its log-sum-exp over the same visible keys, natural log), replaces the softmax's own
    normaliser: ``exp(logit - log_normalizer)``. ``chunk_size`` queries are computed at a time.
    """
    _check(query, key, query_positions, window, key_valid, query_segments, key_segments, mask, reduce, log_normalizer)
    batch, heads, n_q = query.shape[:3]
    groups = heads // key.shape[1]
    # the float copy expanded over each group is what scoring always multiplied: the CPU results stay the bits
    # they were (a grouped matmul would be free of the copy but may round differently)
    keys = key.float().repeat_interleave(groups, dim=1) if groups > 1 else key.float()
    total = torch.zeros(batch, key.shape[2], dtype=torch.float32, device=query.device)
    rows: list[torch.Tensor] = []
    for start in range(0, n_q, chunk_size):
        stop = min(start + chunk_size, n_q)
        logits = torch.matmul(query[:, :, start:stop].float(), keys.transpose(-1, -2)) * scaling
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if mask is not None:
            part = mask[..., start:stop, :] if mask.dim() >= 2 and mask.shape[-2] == n_q else mask
            logits = logits.masked_fill(~part, float("-inf")) if part.dtype == torch.bool else logits + part.float()
        visible = _visible(start, stop, key.shape[2], query_positions, window, key_valid, query_segments, key_segments)
        if visible is not None:
            logits = logits.masked_fill(~visible.to(logits.device), float("-inf"))
        if log_normalizer is None:
            probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row with no visible key is all NaN: zeros
        else:  # such a row has log-sum-exp -inf, and -inf - -inf is NaN: zeros too
            probs = torch.exp(logits - log_normalizer[:, :, start:stop, None].float()).nan_to_num(0.0)
        if per_query:
            rows.append(probs.sum(dim=1) / heads)  # summed then divided, as the mass is: one row equals its mass
        else:
            total += probs.sum(dim=(1, 2))
    if per_query:
        return torch.cat(rows, dim=1) if rows else query.new_zeros(batch, 0, key.shape[2], dtype=torch.float32)
    return total / (heads * n_q) if reduce == "mean" else total / heads


def attention_mass_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    *,
    softcap: float | None = None,
    query_positions: torch.Tensor | None = None,
    window: int | None = None,
    key_valid: torch.Tensor | None = None,
    query_segments: torch.Tensor | None = None,
    key_segments: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    per_query: bool = False,
    reduce: str = "mean",
    log_normalizer: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """``attention_mass_reference`` as two Triton passes over key blocks (``O(B * H * Q + B * K)`` extra memory;
    deterministic); one pass when ``log_normalizer`` is given. Needs tensors on a Triton device (or
    ``TRITON_INTERPRET=1`` set before the first call); ``chunk_size`` is the reference's and is ignored: the
    kernel tiles by itself."""
    _check(query, key, query_positions, window, key_valid, query_segments, key_segments, mask, reduce, log_normalizer)
    if query.shape[2] == 0 or key.shape[2] == 0:  # nothing to launch; the reference says what empty gives
        return attention_mass_reference(
            query, key, scaling, softcap=softcap, mask=mask, per_query=per_query, reduce=reduce
        )
    return _triton_module().launch(
        query, key, scaling, softcap=softcap, query_positions=query_positions, window=window,
        key_valid=key_valid, query_segments=query_segments, key_segments=key_segments, mask=mask,
        per_query=per_query, reduce=reduce, log_normalizer=log_normalizer,
    )  # fmt: skip


@cache
def triton_available() -> bool:
    """Whether Triton is installed (CPU builds of torch come without it)."""
    return importlib.util.find_spec("triton") is not None


def _triton_module() -> ModuleType:
    # imported on first use: the reference must work where Triton is not installed
    return importlib.import_module("vlmzip.kernels._attention_mass_triton")


def _visible(start, stop, n_k, positions, window, key_valid, query_segments, key_segments) -> torch.Tensor | None:
    """Visibility of the keys to queries ``start:stop`` under the cheap masks, ``[B, 1, q, K]`` bool (or None)."""
    visible = None
    if positions is not None:
        rows = positions[:, start:stop, None]
        columns = torch.arange(n_k, device=positions.device)
        visible = columns <= rows
        if window is not None:
            visible &= columns > rows - window
    if key_valid is not None:
        valid = key_valid[:, None, :]
        visible = valid if visible is None else visible & valid.to(visible.device)
    if query_segments is not None:
        same = query_segments[:, start:stop, None] == key_segments[:, None, :]
        visible = same if visible is None else visible & same.to(visible.device)
    return None if visible is None else visible[:, None]


def _check(query, key, positions, window, key_valid, query_segments, key_segments, mask, reduce, lse) -> None:
    """Raise ``ValueError`` naming the first argument whose shape or type does not fit."""
    if query.dim() != 4 or key.dim() != 4:
        raise ValueError(f"query and key must be [B, H, Q, d] and [B, Hkv, K, d], got {tuple(query.shape)} and "
                         f"{tuple(key.shape)}")  # fmt: skip
    batch, heads, n_q, head_dim = query.shape
    if key.shape[0] != batch or key.shape[3] != head_dim or key.shape[1] == 0 or heads % key.shape[1]:
        raise ValueError(f"key {tuple(key.shape)} does not fit query {tuple(query.shape)}: same batch and head "
                         "dimension, and a number of key heads dividing the query heads")  # fmt: skip
    n_k = key.shape[2]
    for name, value, length, kind in (
        ("query_positions", positions, n_q, "int"),
        ("key_valid", key_valid, n_k, "bool"),
        ("query_segments", query_segments, n_q, "int"),
        ("key_segments", key_segments, n_k, "int"),
    ):
        if value is None:
            continue
        if value.dim() != 2 or value.shape[0] not in (1, batch) or value.shape[1] != length:
            raise ValueError(f"{name} must be [{batch}, {length}], got {tuple(value.shape)}")
        if (kind == "bool") != (value.dtype == torch.bool) or value.is_floating_point() or value.is_complex():
            raise ValueError(f"{name} must be {'bool' if kind == 'bool' else 'an integer tensor'}, got {value.dtype}")
    if (query_segments is None) != (key_segments is None):
        raise ValueError("query_segments and key_segments come together")
    if window is not None and (positions is None or window < 1):
        raise ValueError(f"window={window} needs query_positions and must be at least 1")
    if mask is not None:
        if mask.dim() > 4 or not _broadcasts(mask.shape, (batch, heads, n_q, n_k)):
            raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to [{batch}, 1|{heads}, {n_q}, {n_k}]")
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise ValueError(f"mask must be bool (True = visible) or additive float, got {mask.dtype}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if lse is not None and (tuple(lse.shape) != (batch, heads, n_q) or not lse.is_floating_point()):
        raise ValueError(
            f"log_normalizer must be a float [{batch}, {heads}, {n_q}], got {tuple(lse.shape)} {lse.dtype}"
        )


def _broadcasts(shape: torch.Size, target: tuple[int, ...]) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without growing it."""
    try:
        return torch.broadcast_shapes(shape, target) == torch.Size(target)
    except RuntimeError:
        return False
