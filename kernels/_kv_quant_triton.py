"""Triton side of ``vlmzip.kernels.kv_quant``: quantise/pack and unpack/dequantise, one kernel each.

Called only through ``kv_quant.quantize_triton``/``dequantize_triton``, which check the arguments first. Both
layouts run the same kernels: a tensor is seen as ``[N, S, d]`` and each kernel indexes a *grouped* axis (tokens
for keys, channels for values) and the *other* axis through strides, so "tokens" and "channels" differ only in
which strides are passed. One program handles one group along the grouped axis for a block of the other axis:
the ``[BLOCK_G, BLOCK_O]`` tile is a row of ``BLOCK_O`` groups side by side, reduced over axis 0.

The arithmetic is the reference's, operation for operation (fp32 sub, div, add, floor; scale rounded up on its
bits), so under Triton's interpreter the codes are the reference's bits. On a GPU, Triton's fp32 division may
differ from IEEE by an ulp, which can move an element sitting exactly between two codes to the other one: still
within ``scale / 2``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vlmzip.kernels.kv_quant import MANTISSA, PackedKV


@triton.jit
def _quantize(
    x_ptr, payload_ptr, scale_ptr, zero_ptr, n_other, n_groups,
    x_sn, x_sg, x_so, p_sn, p_sg, p_so, s_sn, s_sg, s_so,
    BITS: tl.constexpr, GROUP: tl.constexpr, DROP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    PER: tl.constexpr = 8 // BITS
    LEVELS: tl.constexpr = (1 << BITS) - 1
    # int64: offsets past 2**31 elements must not wrap
    pid = tl.program_id(0).to(tl.int64)
    n, g = pid // n_groups, pid % n_groups
    others = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    members = tl.arange(0, BLOCK_G)
    inside = (members[:, None] < GROUP) & (others[None, :] < n_other)
    offsets = n * x_sn + (g * GROUP + members)[:, None] * x_sg + others[None, :] * x_so
    x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    low = tl.min(tl.where(inside, x, float("inf")), axis=0)
    high = tl.max(tl.where(inside, x, float("-inf")), axis=0)
    low = tl.where(others < n_other, low, 0.0)  # columns past the end: finite, never stored
    high = tl.where(others < n_other, high, 0.0)
    # the scale rounded up to the storage dtype's mantissa: add all ones below the kept bits, then clear them
    bits = ((high - low) / LEVELS).to(tl.int32, bitcast=True)
    scale = ((bits + ((1 << DROP) - 1)) & -(1 << DROP)).to(tl.float32, bitcast=True)
    scale = scale.to(scale_ptr.dtype.element_ty)
    safe = tl.where(scale > 0, scale.to(tl.float32), 1.0)  # a constant group: every code 0
    codes = tl.floor((x - low[None, :]) / safe[None, :] + 0.5)
    codes = tl.minimum(tl.maximum(codes, 0.0), LEVELS).to(tl.int32)
    # PER consecutive codes of the grouped axis into one byte, the first lowest; the bit fields are disjoint, so
    # their sum is their bitwise or. Rows past the group are padding and land in bytes past it (GROUP % PER == 0).
    codes = tl.reshape(codes, [BLOCK_G // PER, PER, BLOCK_O])
    shifts = tl.arange(0, PER) * BITS
    packed = tl.sum(codes << shifts[None, :, None], axis=1).to(tl.uint8)
    rows = tl.arange(0, BLOCK_G // PER)
    stored = (rows[:, None] < GROUP // PER) & (others[None, :] < n_other)
    offsets = n * p_sn + (g * (GROUP // PER) + rows)[:, None] * p_sg + others[None, :] * p_so
    tl.store(payload_ptr + offsets, packed, mask=stored)
    offsets = n * s_sn + g * s_sg + others * s_so
    tl.store(scale_ptr + offsets, scale, mask=others < n_other)
    tl.store(zero_ptr + offsets, low.to(zero_ptr.dtype.element_ty), mask=others < n_other)


@triton.jit
def _dequantize(
    payload_ptr, scale_ptr, zero_ptr, out_ptr, n_other, n_groups,
    p_sn, p_sg, p_so, s_sn, s_sg, s_so, o_sn, o_sg, o_so,
    BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_O: tl.constexpr,
):  # fmt: skip
    PER: tl.constexpr = 8 // BITS
    pid = tl.program_id(0).to(tl.int64)
    n, g = pid // n_groups, pid % n_groups
    others = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    members = tl.arange(0, BLOCK_G)
    inside = (members[:, None] < GROUP) & (others[None, :] < n_other)
    # each byte is read by the PER members it holds (the repeats hit the cache), which keeps the tile 2D
    rows = g * (GROUP // PER) + members // PER
    offsets = n * p_sn + rows[:, None] * p_sg + others[None, :] * p_so
    byte = tl.load(payload_ptr + offsets, mask=inside, other=0).to(tl.int32)
    codes = (byte >> ((members % PER) * BITS)[:, None]) & ((1 << BITS) - 1)
    offsets = n * s_sn + g * s_sg + others * s_so
    scale = tl.load(scale_ptr + offsets, mask=others < n_other, other=0.0).to(tl.float32)
    zero = tl.load(zero_ptr + offsets, mask=others < n_other, other=0.0).to(tl.float32)
    out = codes.to(tl.float32) * scale[None, :] + zero[None, :]
    offsets = n * o_sn + (g * GROUP + members)[:, None] * o_sg + others[None, :] * o_so
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=inside)


def quantize(x: torch.Tensor, bits: int, group_size: int, group_along: str) -> PackedKV:
    """Launch ``_quantize`` on a checked, non-empty ``x [..., S, d]``."""
    *lead, length, dim = x.shape
    flat = x.reshape(-1, length, dim)
    tokens = group_along == "tokens"
    per = 8 // bits
    payload_shape = (flat.shape[0], length // per, dim) if tokens else (flat.shape[0], length, dim // per)
    scale_shape = (flat.shape[0], length // group_size, dim) if tokens else (flat.shape[0], length, dim // group_size)
    payload = torch.empty(payload_shape, dtype=torch.uint8, device=x.device)
    scale = torch.empty(scale_shape, dtype=x.dtype, device=x.device)
    zero = torch.empty_like(scale)
    n_groups, n_other, block_g, block_o = _grid(length, dim, group_size, tokens)
    grid = (flat.shape[0] * n_groups, triton.cdiv(n_other, block_o))
    _quantize[grid](
        flat, payload, scale, zero, n_other, n_groups,
        *_strides(flat, tokens), *_strides(payload, tokens), *_strides(scale, tokens),
        BITS=bits, GROUP=group_size, DROP=23 - MANTISSA[x.dtype], BLOCK_G=block_g, BLOCK_O=block_o,
    )  # fmt: skip

    def back(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(*lead, *tensor.shape[1:])

    return PackedKV(back(payload), back(scale), back(zero), bits, group_size, group_along)


def dequantize(packed: PackedKV) -> torch.Tensor:
    """Launch ``_dequantize`` on a checked, non-empty ``packed``."""
    *lead, length, dim = packed.shape
    tokens = packed.group_along == "tokens"
    payload = packed.payload.reshape(-1, *packed.payload.shape[-2:])
    scale, zero = (t.reshape(-1, *t.shape[-2:]) for t in (packed.scale, packed.zero))
    if zero.stride() != scale.stride():  # the kernel indexes both with the scale's strides
        scale, zero = scale.contiguous(), zero.contiguous()
    out = torch.empty(payload.shape[0], length, dim, dtype=packed.dtype, device=payload.device)
    n_groups, n_other, block_g, block_o = _grid(length, dim, packed.group_size, tokens)
    grid = (payload.shape[0] * n_groups, triton.cdiv(n_other, block_o))
    _dequantize[grid](
        payload, scale, zero, out, n_other, n_groups,
        *_strides(payload, tokens), *_strides(scale, tokens), *_strides(out, tokens),
        BITS=packed.bits, GROUP=packed.group_size, BLOCK_G=block_g, BLOCK_O=block_o,
    )  # fmt: skip
    return out.view(*lead, length, dim)


def _grid(length: int, dim: int, group_size: int, tokens: bool) -> tuple[int, int, int, int]:
    """Groups along the grouped axis, the other axis's length, and the tile: a group by ~4K elements."""
    grouped, other = (length, dim) if tokens else (dim, length)
    block_g = triton.next_power_of_2(group_size)
    block_o = max(16, min(triton.next_power_of_2(other), 4096 // block_g))
    return grouped // group_size, other, block_g, block_o


def _strides(tensor: torch.Tensor, tokens: bool) -> tuple[int, int, int]:
    """An ``[N, S, d]``-like tensor's strides as (N, grouped axis, other axis)."""
    n, s, d = tensor.stride()
    return (n, s, d) if tokens else (n, d, s)
