"""Triton side of ``vlmzip.kernels.decode_attention``: split-context decode attention over a packed cache.

Called only through ``decode_attention.decode_attention_triton``, which checks the arguments first.

1. ``_split``, one program per (chunk, sample x KV head). Chunks cut each segment into ``split_size`` keys: the
   first ``ceil(S_packed / split_size)`` are packed, the rest full precision, so one launch covers both segments
   and a program reads one kind of tile. The program holds the ``Hq / Hkv * q`` query rows of its KV head as one
   tile (each key tile is read once for the whole group), loads ``[BLOCK_N, d]`` key and value tiles (packed
   ones unpacked and dequantised in registers: ``zero + code * scale``), and runs an online softmax over them.
   It writes the chunk's normalised output and log-sum-exp (base 2), ``-inf`` when it saw no valid key.
2. ``_combine``, one program per query row: ``out = sum_c 2**(lse_c - lse) * out_c`` over the chunks, with
   ``lse = log2 sum_c 2**lse_c``; zeros for a row that saw no key at all. It also writes the row's ``lse`` (natural
   log, ``-inf`` for a row without keys) for callers that join segments (``decode_attention.merge_attention``).

Deterministic (no atomics). Under Triton's interpreter, which multiplies bf16 tiles as raw integers, bf16 runs its
products in fp32; on a GPU, 16-bit queries multiply 16-bit tiles (dequantised keys and values rounded to the
query's dtype, softmax weights too, as flash attention does) with fp32 accumulation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from vlmzip.kernels.kv_quant import PackedKV

# @triton.jit reads TRITON_INTERPRET when it decorates, i.e. when this module executes (Triton 3.6).
INTERPRETED = bool(triton.knobs.runtime.interpret)
_LOG2E = 1.4426950408889634
#: programs the default split aims for: twice an H200's 132 SMs (not tuned: no GPU measurement yet)
TARGET_PROGRAMS = 264


class Config(NamedTuple):
    """Launch parameters of the split kernel: keys per tile, warps and software-pipeline stages."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2


DEFAULT_CONFIG = Config()


@triton.jit
def _dequantized(
    payload_ptr, scale_ptr, zero_ptr, p_st, p_sd, s_st, s_sd, tokens, dims, inside,
    BITS: tl.constexpr, GROUP: tl.constexpr, ALONG_TOKENS: tl.constexpr,
):  # fmt: skip
    """The fp32 ``[BLOCK_N, BLOCK_D]`` tile of a packed ``[S, d]`` matrix at ``tokens`` x ``dims``; 0 outside."""
    PER: tl.constexpr = 8 // BITS
    if ALONG_TOKENS:  # byte [t // PER, c], bit field t % PER; one scale per GROUP tokens of a channel
        bytes_at = (tokens // PER)[:, None] * p_st + dims[None, :] * p_sd
        shift = ((tokens % PER) * BITS)[:, None]
        groups_at = (tokens // GROUP)[:, None] * s_st + dims[None, :] * s_sd
    else:  # byte [t, c // PER], bit field c % PER; one scale per GROUP channels of a token
        bytes_at = tokens[:, None] * p_st + (dims // PER)[None, :] * p_sd
        shift = ((dims % PER) * BITS)[None, :]
        groups_at = tokens[:, None] * s_st + (dims // GROUP)[None, :] * s_sd
    # each byte is read by the PER elements it holds (the repeats hit the cache), which keeps the tile 2D
    byte = tl.load(payload_ptr + bytes_at, mask=inside, other=0).to(tl.int32)
    codes = ((byte >> shift) & ((1 << BITS) - 1)).to(tl.float32)
    scale = tl.load(scale_ptr + groups_at, mask=inside, other=0.0).to(tl.float32)
    zero = tl.load(zero_ptr + groups_at, mask=inside, other=0.0).to(tl.float32)
    return codes * scale + zero


@triton.jit
def _attend(q, k, v, live, m_i, l_i, acc, scale_log2, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """One online-softmax step of the rows ``q`` over a key tile (``live``: the keys that count)."""
    if DOT_F32:
        k, v = k.to(tl.float32), v.to(tl.float32)
    else:
        k, v = k.to(q.dtype), v.to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    s = tl.where(live[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # a row with nothing valid yet keeps max -inf; subtracting 0 instead avoids inf - inf
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - shift[:, None])
    alpha = tl.exp2(m_i - shift)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _split(
    q_ptr, part_ptr, lse_ptr,
    kp_ptr, ks_ptr, kz_ptr, kp_sb, kp_sh, kp_st, kp_sd, ks_sb, ks_sh, ks_st, ks_sd,
    vp_ptr, vs_ptr, vz_ptr, vp_sb, vp_sh, vp_st, vp_sd, vs_sb, vs_sh, vs_st, vs_sd,
    fk_ptr, fk_sb, fk_sh, fk_st, fv_ptr, fv_sb, fv_sh, fv_st,
    pvalid_ptr, pvalid_sb, fvalid_ptr, fvalid_sb,
    n_packed, n_full, packed_splits, n_splits, kv_heads, n_rows, head_dim, scale_log2, split_size,
    K_BITS: tl.constexpr, K_GROUP: tl.constexpr, K_TOKENS: tl.constexpr,
    V_BITS: tl.constexpr, V_GROUP: tl.constexpr, V_TOKENS: tl.constexpr,
    PACKED_VALID: tl.constexpr, FULL_VALID: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # int64 (sample, KV head) index: offsets past 2**31 elements must not wrap
    split, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    b, h = bh // kv_heads, bh % kv_heads
    rows, dims = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    # the query is contiguous [B, Hq, q, d]: the Hq / Hkv * q rows of KV head h are consecutive
    q_at = (bh * n_rows + rows)[:, None] * head_dim + dims[None, :]
    q = tl.load(q_ptr + q_at, mask=(rows[:, None] < n_rows) & (dims[None, :] < head_dim), other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if split < packed_splits:
        start = split * split_size
        stop = tl.minimum(start + split_size, n_packed)
        for first in range(start, stop, BLOCK_N):
            tokens = first + tl.arange(0, BLOCK_N)
            live = tokens < stop
            inside = live[:, None] & (dims[None, :] < head_dim)
            k = _dequantized(
                kp_ptr + b * kp_sb + h * kp_sh, ks_ptr + b * ks_sb + h * ks_sh, kz_ptr + b * ks_sb + h * ks_sh,
                kp_st, kp_sd, ks_st, ks_sd, tokens, dims, inside, K_BITS, K_GROUP, K_TOKENS,
            )  # fmt: skip
            v = _dequantized(
                vp_ptr + b * vp_sb + h * vp_sh, vs_ptr + b * vs_sb + h * vs_sh, vz_ptr + b * vs_sb + h * vs_sh,
                vp_st, vp_sd, vs_st, vs_sd, tokens, dims, inside, V_BITS, V_GROUP, V_TOKENS,
            )  # fmt: skip
            if PACKED_VALID:
                live = live & (tl.load(pvalid_ptr + b * pvalid_sb + tokens, mask=live, other=0) != 0)
            m_i, l_i, acc = _attend(q, k, v, live, m_i, l_i, acc, scale_log2, DOT_F32, PRECISION)
    else:
        start = (split - packed_splits) * split_size
        stop = tl.minimum(start + split_size, n_full)
        k_base, v_base = fk_ptr + b * fk_sb + h * fk_sh, fv_ptr + b * fv_sb + h * fv_sh
        for first in range(start, stop, BLOCK_N):
            tokens = first + tl.arange(0, BLOCK_N)
            live = tokens < stop
            inside = live[:, None] & (dims[None, :] < head_dim)
            k = tl.load(k_base + tokens[:, None] * fk_st + dims[None, :], mask=inside, other=0.0)
            v = tl.load(v_base + tokens[:, None] * fv_st + dims[None, :], mask=inside, other=0.0)
            if FULL_VALID:
                live = live & (tl.load(fvalid_ptr + b * fvalid_sb + tokens, mask=live, other=0) != 0)
            m_i, l_i, acc = _attend(q, k, v, live, m_i, l_i, acc, scale_log2, DOT_F32, PRECISION)
    seen = l_i > 0
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    # partials [B * Hkv, rows, splits, d]: the combine reads a row's chunks contiguously
    at = (bh * n_rows + rows) * n_splits + split
    tl.store(lse_ptr + at, lse, mask=rows < n_rows)
    tl.store(part_ptr + at[:, None] * head_dim + dims[None, :], out,
             mask=(rows[:, None] < n_rows) & (dims[None, :] < head_dim))  # fmt: skip


@triton.jit
def _combine(part_ptr, lse_ptr, out_ptr, row_lse_ptr, n_splits, head_dim, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # rows of [B, Hq, q] in order: the partials' and the output's order
    dims = tl.arange(0, BLOCK_D)
    m = tl.full([], float("-inf"), tl.float32)
    total = tl.full([], 0.0, tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for first in range(0, n_splits, BLOCK_S):
        splits = first + tl.arange(0, BLOCK_S)
        lse = tl.load(lse_ptr + row * n_splits + splits, mask=splits < n_splits, other=float("-inf"))
        at = (row * n_splits + splits)[:, None] * head_dim + dims[None, :]
        part = tl.load(part_ptr + at, mask=(splits[:, None] < n_splits) & (dims[None, :] < head_dim), other=0.0)
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        weight = tl.exp2(lse - shift)
        alpha = tl.exp2(m - shift)
        total = total * alpha + tl.sum(weight, axis=0)
        acc = acc * alpha + tl.sum(weight[:, None] * part, axis=0)
        m = m_new
    out = acc / tl.where(total > 0, total, 1.0)  # a row that saw no key: zeros
    tl.store(out_ptr + row * head_dim + dims, out.to(out_ptr.dtype.element_ty), mask=dims < head_dim)
    # base 2 to natural log: times ln 2
    row_lse = tl.where(total > 0, (m + tl.log2(tl.where(total > 0, total, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(row_lse_ptr + row, row_lse)


def default_split_size(programs_per_chunk: int, n_keys: int, block_n: int = 64) -> int:
    """Keys per chunk: about ``TARGET_PROGRAMS`` programs over ``n_keys`` keys when each chunk index runs
    ``programs_per_chunk`` (samples x KV heads) programs, and a whole number of ``block_n`` blocks."""
    chunks = max(1, triton.cdiv(TARGET_PROGRAMS, programs_per_chunk))
    return max(block_n, triton.cdiv(triton.cdiv(n_keys, chunks), block_n) * block_n)


def launch(
    query: torch.Tensor,
    packed_key: PackedKV,
    packed_value: PackedKV,
    full_key: torch.Tensor,
    full_value: torch.Tensor,
    scaling: float,
    packed_valid: torch.Tensor | None,
    full_valid: torch.Tensor | None,
    split_size: int | None,
    config: Config = DEFAULT_CONFIG,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run both kernels on checked arguments with at least one query row and one key: the output and the rows'
    log-sum-exp (natural log, fp32 ``[B, Hq, q]``)."""
    batch, heads, n_q, dim = query.shape
    kv_heads = full_key.shape[1]
    n_rows = heads // kv_heads * n_q
    n_packed, n_full = packed_key.shape[2], full_key.shape[2]
    split = split_size or default_split_size(batch * kv_heads, n_packed + n_full, config.block_n)
    packed_splits = triton.cdiv(n_packed, split)
    n_splits = packed_splits + triton.cdiv(n_full, split)
    query = query.contiguous()  # a few rows: the kernels index it as [B * Hkv, rows, d]
    full_key, full_value = _unit_stride(full_key), _unit_stride(full_value)
    part = torch.empty(batch * kv_heads, n_rows, n_splits, dim, dtype=torch.float32, device=query.device)
    lse = torch.empty(batch * kv_heads, n_rows, n_splits, dtype=torch.float32, device=query.device)
    unused = query.new_zeros(1, dtype=torch.uint8)
    dot_f32 = query.dtype == torch.float32 or (INTERPRETED and query.dtype == torch.bfloat16)
    _split[(n_splits, batch * kv_heads)](
        query, part, lse,
        *_packed_args(packed_key), *_packed_args(packed_value),
        full_key, *full_key.stride()[:3], full_value, *full_value.stride()[:3],
        *_mask_args(packed_valid, unused), *_mask_args(full_valid, unused),
        n_packed, n_full, packed_splits, n_splits, kv_heads, n_rows, dim, float(scaling) * _LOG2E, split,
        K_BITS=packed_key.bits, K_GROUP=packed_key.group_size, K_TOKENS=packed_key.group_along == "tokens",
        V_BITS=packed_value.bits, V_GROUP=packed_value.group_size, V_TOKENS=packed_value.group_along == "tokens",
        PACKED_VALID=packed_valid is not None, FULL_VALID=full_valid is not None,
        DOT_F32=dot_f32, PRECISION="ieee" if dot_f32 else "tf32",
        BLOCK_M=max(16, triton.next_power_of_2(n_rows)),
        BLOCK_N=min(config.block_n, max(16, triton.next_power_of_2(split))),
        BLOCK_D=max(16, triton.next_power_of_2(dim)), num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    out = torch.empty_like(query)
    row_lse = torch.empty(batch, heads, n_q, dtype=torch.float32, device=query.device)
    block_s = min(64, triton.next_power_of_2(n_splits))
    _combine[(batch * heads * n_q,)](part, lse, out, row_lse, n_splits, dim, BLOCK_S=block_s,
                                     BLOCK_D=triton.next_power_of_2(dim))  # fmt: skip
    return out, row_lse


def _packed_args(packed: PackedKV) -> tuple:
    """Pointers and (sample, head, token, channel) strides of a packed ``[B, H, S, d]``'s payload and scales; the
    zero points share the scales' strides (a copy only for a pair that does not)."""
    scale, zero = packed.scale, packed.zero
    if scale.stride() != zero.stride():
        scale, zero = scale.contiguous(), zero.contiguous()
    return (packed.payload, scale, zero, *packed.payload.stride(), *scale.stride())


def _mask_args(mask: torch.Tensor | None, unused: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A ``[B, S]`` bool mask as (uint8 pointer, batch stride); a placeholder when absent."""
    if mask is None:
        return unused, 0
    mask = _unit_stride(mask).view(torch.uint8)
    return mask, mask.stride(0)


def _unit_stride(tensor: torch.Tensor) -> torch.Tensor:
    """The kernels step the last dimension by 1 (a copy only for the rare tensor that does not)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()
