"""Decode attention over a quantised KV cache, read packed: a quantised cache is never expanded in memory.

A decode step's few query rows (usually one a sample) attend one layer's cache, held in two segments:

* the **packed** segment, ``kv_quant.PackedKV`` keys and values of ``[B, Hkv, S_packed, d]`` (KIVI: keys grouped
  along tokens, values along channels; any of the two layouts works for either), and
* the **full-precision** segment ``[B, Hkv, S_full, d]`` in the query's dtype: the recent window not yet quantised
  and any entries a method keeps at full precision. Either segment may be empty.

Every query row attends every valid key of both segments: ``packed_valid [B, S_packed]`` and ``full_valid
[B, S_full]`` (bool, True = attend; default all) mark left padding and evicted entries. Rows are not ordered
among themselves (no causal mask): for ``q > 1`` (several tokens decoded at once) each row sees every valid key,
so a caller that needs the new rows causal keeps them out of the cache until after the step. Grouped-query
attention: ``Hq`` is a multiple of ``Hkv``, query head ``h`` reads key head ``h // (Hq // Hkv)``. Logits are
``query @ key * scaling``; a row that sees no valid key returns zeros. Output ``[B, Hq, q, d]`` in the query's
dtype. With ``return_lse=True`` a function also returns each row's log-sum-exp of its logits (natural log, fp32
``[B, Hq, q]``, ``-inf`` for a row that saw no key): attention over several packed segments of different bit widths
(ZipVL's mixed precision) is then one call per segment, joined exactly by ``merge_attention``.

``decode_attention_reference`` dequantises both packed tensors and runs a softmax attention in fp32.
``decode_attention_triton`` (``_decode_attention_triton``) splits the context (flash-decoding): one program per
(sample, KV head, chunk of ``split_size`` keys of one segment) dequantises its chunk in registers, attends it
with every query row of the KV head's group at once (each key is read once for the whole group) and writes a
partial output with its log-sum-exp; a second kernel combines the chunks. ``decode_attention`` runs the kernel on
CUDA tensors and the reference elsewhere.

**The floor, counted before any tuning** (Qwen2.5-VL-7B's layer: B=1, Hkv=4, Hq=28, d=128, bf16; a 16,384-token
context as KIVI-2 stores it: 16,256 tokens at 2 bits in groups of 32, a 128-token bf16 window; per layer and
decode step): a packed token costs, per KV head, 32 B of key codes + 16 B of key scales and zeros (4 B per 32
tokens of each of 128 channels) + 32 B of value codes + 16 B of value scales and zeros (4 B per 32 channels):
96 B against bf16's 512. Reads: 16,256 x 4 x 96 = 6,242,304 B packed + 262,144 B of window + 14 KB of query and
output = **6.52 MB, 1.36 us at an H200's 4.8 TB/s**; bf16 SDPA over the same context reads 33.6 MB (7.0 us):
0.194x. At B=8: 52.2 MB (10.9 us) against 268 MB (55.9 us). The chunk partials (``B * Hq * q * splits * (d + 1)``
fp32, ~0.9 MB at B=1 with the default split) are written and read back once, from L2 on an H200. At B=1 the two
launches (~2-4 us each) exceed the floor: the step is launch-bound unless captured in a CUDA graph.
"""

from __future__ import annotations

import importlib

import torch

from vlmzip.kernels.attention_mass import triton_available
from vlmzip.kernels.kv_quant import PackedKV, check_packed, dequantize_reference

__all__ = ["decode_attention", "decode_attention_reference", "decode_attention_triton", "merge_attention"]


def decode_attention_reference(
    query: torch.Tensor,
    packed_key: PackedKV,
    packed_value: PackedKV,
    full_key: torch.Tensor,
    full_value: torch.Tensor,
    scaling: float,
    *,
    packed_valid: torch.Tensor | None = None,
    full_valid: torch.Tensor | None = None,
    split_size: int | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of ``query [B, Hq, q, d]`` over the dequantised packed segment followed by the full one,
    in fp32 (module docstring), and with ``return_lse`` the rows' log-sum-exp; ``split_size`` is the kernel's and is
    ignored here."""
    _check(query, packed_key, packed_value, full_key, full_value, packed_valid, full_valid, split_size)
    batch, heads = query.shape[:2]
    groups = heads // full_key.shape[1]
    keys = torch.cat([dequantize_reference(packed_key).float(), full_key.float()], dim=2)
    values = torch.cat([dequantize_reference(packed_value).float(), full_value.float()], dim=2)
    valid = torch.cat([_valid(packed_valid, batch, packed_key.shape[2], query.device),
                       _valid(full_valid, batch, full_key.shape[2], query.device)], dim=1)  # fmt: skip
    keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    logits = torch.matmul(query.float(), keys.transpose(-1, -2)) * scaling
    logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row with no valid key is all NaN: zeros
    out = torch.matmul(probs, values).to(query.dtype)
    return (out, torch.logsumexp(logits, dim=-1)) if return_lse else out


def decode_attention_triton(
    query: torch.Tensor,
    packed_key: PackedKV,
    packed_value: PackedKV,
    full_key: torch.Tensor,
    full_value: torch.Tensor,
    scaling: float,
    *,
    packed_valid: torch.Tensor | None = None,
    full_valid: torch.Tensor | None = None,
    split_size: int | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``decode_attention_reference`` as two Triton kernels reading the packed cache directly (module docstring);
    ``split_size``: keys per program (default: enough programs to fill an H200 twice over)."""
    _check(query, packed_key, packed_value, full_key, full_value, packed_valid, full_valid, split_size)
    if query.shape[2] == 0 or packed_key.shape[2] + full_key.shape[2] == 0:  # nothing to launch
        nothing = torch.full(query.shape[:3], float("-inf"), device=query.device)
        return (torch.zeros_like(query), nothing) if return_lse else torch.zeros_like(query)
    out, lse = importlib.import_module("vlmzip.kernels._decode_attention_triton").launch(
        query, packed_key, packed_value, full_key, full_value, scaling, packed_valid, full_valid, split_size
    )
    return (out, lse) if return_lse else out


def decode_attention(
    query: torch.Tensor,
    packed_key: PackedKV,
    packed_value: PackedKV,
    full_key: torch.Tensor,
    full_value: torch.Tensor,
    scaling: float,
    *,
    packed_valid: torch.Tensor | None = None,
    full_valid: torch.Tensor | None = None,
    split_size: int | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel on CUDA tensors (where Triton imports), the reference elsewhere."""
    function = decode_attention_triton if query.is_cuda and triton_available() else decode_attention_reference
    return function(query, packed_key, packed_value, full_key, full_value, scaling, packed_valid=packed_valid,
                    full_valid=full_valid, split_size=split_size, return_lse=return_lse)  # fmt: skip


def merge_attention(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One attention over several disjoint sets of keys from each set's ``(out [B, Hq, q, d], lse [B, Hq, q])``
    (``return_lse=True``): every part weighed by its share ``exp(lse_i - lse)`` of the joint normaliser. A row that
    saw no key in any part is zeros."""
    lses = torch.stack([lse.float() for _, lse in parts])
    total = torch.logsumexp(lses, dim=0)
    weights = torch.exp(lses - total).nan_to_num(0.0)  # -inf - -inf: a row with no key anywhere
    merged = sum(weight[..., None] * out.float() for weight, (out, _) in zip(weights, parts))
    return merged.to(parts[0][0].dtype)


def _valid(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    return torch.ones(batch, length, dtype=torch.bool, device=device) if mask is None else mask.to(device)


def _check(query, packed_key, packed_value, full_key, full_value, packed_valid, full_valid, split_size) -> None:
    """Raise ``ValueError`` naming the first argument whose shape or type does not fit."""
    if query.dim() != 4 or query.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"query must be a [B, Hq, q, d] bf16, fp16 or fp32 tensor, got {tuple(query.shape)} "
                         f"{query.dtype}")  # fmt: skip
    batch, heads, _, dim = query.shape
    if full_key.dim() != 4 or full_key.shape != full_value.shape:
        raise ValueError(f"full_key and full_value must be [B, Hkv, S_full, d] of one shape (S_full=0 when empty), "
                         f"got {tuple(full_key.shape)} and {tuple(full_value.shape)}")  # fmt: skip
    kv_heads = full_key.shape[1]
    if full_key.shape[0] != batch or full_key.shape[3] != dim or kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"full_key {tuple(full_key.shape)} does not fit query {tuple(query.shape)}: same batch and "
                         "head dimension, and a number of key heads dividing the query heads")  # fmt: skip
    if full_key.dtype != query.dtype or full_value.dtype != query.dtype:
        raise ValueError(f"full_key and full_value must have the query's dtype {query.dtype}, got "
                         f"{full_key.dtype} and {full_value.dtype}")  # fmt: skip
    for name, packed in (("packed_key", packed_key), ("packed_value", packed_value)):
        if not isinstance(packed, PackedKV):
            raise ValueError(f"{name} must be a kv_quant.PackedKV (from quantize), got {type(packed).__name__}")
        check_packed(packed)
        shape = packed.shape
        if len(shape) != 4 or (shape[0], shape[1], shape[3]) != (batch, kv_heads, dim):
            raise ValueError(f"{name} holds {tuple(shape)}, expected [{batch}, {kv_heads}, S_packed, {dim}] to fit "
                             f"query {tuple(query.shape)} and full_key {tuple(full_key.shape)}")  # fmt: skip
    if packed_key.shape != packed_value.shape:
        raise ValueError(f"packed_key {tuple(packed_key.shape)} and packed_value {tuple(packed_value.shape)} must hold "
                         "the same entries")  # fmt: skip
    for name, mask, length in (("packed_valid", packed_valid, packed_key.shape[2]),
                               ("full_valid", full_valid, full_key.shape[2])):  # fmt: skip
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (batch, length)):
            raise ValueError(f"{name} must be a bool [{batch}, {length}] (True = attend), got "
                             f"{tuple(mask.shape)} {mask.dtype}")  # fmt: skip
    if split_size is not None and (not isinstance(split_size, int) or split_size < 1):
        raise ValueError(f"split_size={split_size!r} must be a positive number of keys (or None for the default)")
