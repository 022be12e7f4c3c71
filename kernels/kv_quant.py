"""KV-cache quantisation: asymmetric min-max codes of 2, 4 or 8 bits with a scale and zero point per group.

KIVI's two layouts, for a tensor ``[..., S, d]`` (a cache layer's ``[B, H, S, d]``):

* ``group_along="tokens"`` (keys, quantised *per channel*): a group is ``group_size`` consecutive tokens of one
  channel; keys have outlier channels, so each channel gets its own range.
* ``group_along="channels"`` (values, quantised *per token*): a group is ``group_size`` consecutive channels of one
  token.

Per group, ``zero = min`` and ``scale = (max - min) / (2**bits - 1)``; an element's code is
``floor((x - zero) / scale + 0.5)`` clamped to ``[0, 2**bits - 1]`` (0 where ``scale == 0``), and it reads back as
``zero + code * scale``. Scales and zero points are stored in the dtype of the tensor quantised (bf16 in a bf16
model: 2 bytes each; fp16: 2; fp32: 4). The zero point is the group's minimum, an element of that dtype, so it is
stored exactly; the scale is rounded *up* to that dtype (``_round_up``), so the grid ``zero + [0, L] * scale``
covers the whole group and every element reads back within ``scale / 2`` of itself (up to fp32 rounding; a
constant group reads back exactly). Only an fp16 scale below fp16's normal range (6.1e-5) may round down.

**Packed layout** (``PackedKV.payload``, ``uint8``): the codes are packed along the grouped axis, ``8 // bits``
codes a byte, the first in the least significant bits: code ``j`` of a byte occupies bits ``[j * bits,
(j + 1) * bits)``. A group holds a whole number of bytes (``group_size`` is a multiple of ``8 // bits``), so no byte
mixes two groups' scales.

========================  ==============================  ==============================
tensor ``[..., S, d]``    ``group_along="tokens"``         ``group_along="channels"``
========================  ==============================  ==============================
``payload`` (uint8)       ``[..., S * bits / 8, d]``:      ``[..., S, d * bits / 8]``:
                          byte ``[r, c]`` holds tokens     byte ``[t, r]`` holds channels
                          ``r * 8/bits + j`` of channel c  ``r * 8/bits + j`` of token t
``scale``, ``zero``       ``[..., S / group_size, d]``     ``[..., S, d / group_size]``
========================  ==============================  ==============================

Bytes (``packed_nbytes``): payload ``numel * bits / 8``, scales and zeros ``numel / group_size * itemsize`` each.
A bf16 cache at 2 bits with groups of 32 takes ``0.25 + 2 * 2 / 32 = 0.375`` bytes an element, 0.1875x of bf16.

``quantize_reference``/``dequantize_reference`` are plain torch; ``quantize_triton``/``dequantize_triton`` (in
``_kv_quant_triton``) run the same operations in the same order: under Triton's interpreter the same payload,
scales and zero points to the bit (dequantised bf16 may differ in the last bit: the interpreter truncates fp32 to
bf16 where torch rounds). ``quantize``/``dequantize`` run Triton on CUDA tensors and the reference elsewhere.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from vlmzip.kernels.attention_mass import triton_available

__all__ = [
    "BITS", "GROUP_ALONG", "PackedBytes", "PackedKV", "check_packed", "dequantize", "dequantize_reference",
    "dequantize_triton", "packed_nbytes", "quantize", "quantize_reference", "quantize_triton",
]  # fmt: skip

BITS = (2, 4, 8)
GROUP_ALONG = ("tokens", "channels")
#: stored mantissa bits of each dtype a tensor (and so its scales and zero points) may have
MANTISSA = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}


@dataclass(frozen=True)
class PackedKV:
    """A quantised ``[..., S, d]`` tensor: codes packed in ``payload``, and per-group ``scale`` and ``zero``
    (layout in the module docstring). ``dequantize`` reads it back in ``scale``'s dtype."""

    payload: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int
    group_along: str

    @property
    def shape(self) -> torch.Size:
        """The shape of the tensor quantised."""
        axis = _axis(self.group_along)
        shape = list(self.payload.shape)
        shape[axis] = shape[axis] * 8 // self.bits
        return torch.Size(shape)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the tensor quantised, and of its scales and zero points."""
        return self.scale.dtype

    def nbytes(self) -> PackedBytes:
        """What its tensors hold (``packed_nbytes`` of its shape)."""
        return packed_nbytes(self.shape, self.bits, self.group_size, self.group_along, self.dtype)


class PackedBytes(NamedTuple):
    """Bytes of a packed tensor's codes, scales and zero points."""

    payload: int
    scales: int
    zeros: int

    @property
    def total(self) -> int:
        return self.payload + self.scales + self.zeros


def packed_nbytes(
    shape: tuple[int, ...] | torch.Size, bits: int, group_size: int, group_along: str, dtype: torch.dtype
) -> PackedBytes:
    """Exact bytes of ``quantize`` of a ``shape`` tensor of ``dtype``: what a cache counts for it."""
    _check_layout(tuple(shape), bits, group_size, group_along, dtype)
    numel = math.prod(shape)
    per_group = numel // group_size * torch.empty((), dtype=dtype).element_size()  # one scale, one zero a group
    return PackedBytes(numel * bits // 8, per_group, per_group)


def quantize_reference(x: torch.Tensor, bits: int, group_size: int, group_along: str) -> PackedKV:
    """Quantise ``x [..., S, d]`` (bf16, fp16 or fp32) to ``bits`` with a scale and zero point per ``group_size``
    elements along ``group_along`` ("tokens" for keys, "channels" for values); plain torch, fp32 math."""
    _check_layout(tuple(x.shape), bits, group_size, group_along, x.dtype)
    axis = _axis(group_along)
    levels = (1 << bits) - 1
    grouped = x.movedim(axis, -1).float()  # the grouped axis last
    grouped = grouped.unflatten(-1, (grouped.shape[-1] // group_size, group_size))
    low, high = grouped.amin(-1), grouped.amax(-1)
    scale = _round_up((high - low) / levels, x.dtype)
    zero = low.to(x.dtype)  # exact: the minimum is one of the elements
    safe = torch.where(scale > 0, scale.float(), 1.0)  # a constant group: every code 0
    codes = torch.floor((grouped - low[..., None]) / safe[..., None] + 0.5).clamp(0, levels)
    payload = _pack(codes.flatten(-2).to(torch.int32), bits)

    def back(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.movedim(-1, axis).contiguous()

    return PackedKV(back(payload), back(scale), back(zero), bits, group_size, group_along)


def dequantize_reference(packed: PackedKV) -> torch.Tensor:
    """``zero + code * scale`` of every element, ``packed.shape`` in ``packed.dtype``; plain torch, fp32 math."""
    check_packed(packed)
    axis = _axis(packed.group_along)
    codes = _unpack(packed.payload.movedim(axis, -1), packed.bits)
    codes = codes.unflatten(-1, (codes.shape[-1] // packed.group_size, packed.group_size)).float()
    scale, zero = (t.movedim(axis, -1).float()[..., None] for t in (packed.scale, packed.zero))
    return (codes * scale + zero).flatten(-2).to(packed.dtype).movedim(-1, axis)


def quantize_triton(x: torch.Tensor, bits: int, group_size: int, group_along: str) -> PackedKV:
    """``quantize_reference`` as one Triton kernel: a program per (group, block of the other axis)."""
    _check_layout(tuple(x.shape), bits, group_size, group_along, x.dtype)
    if x.numel() == 0:  # nothing to launch
        return quantize_reference(x, bits, group_size, group_along)
    return _triton_module().quantize(x, bits, group_size, group_along)


def dequantize_triton(packed: PackedKV) -> torch.Tensor:
    """``dequantize_reference`` as one Triton kernel."""
    check_packed(packed)
    if packed.payload.numel() == 0:
        return dequantize_reference(packed)
    return _triton_module().dequantize(packed)


def quantize(x: torch.Tensor, bits: int, group_size: int, group_along: str) -> PackedKV:
    """The Triton kernel on CUDA tensors (where Triton imports), the reference elsewhere."""
    function = quantize_triton if x.is_cuda and triton_available() else quantize_reference
    return function(x, bits, group_size, group_along)


def dequantize(packed: PackedKV) -> torch.Tensor:
    """The Triton kernel on CUDA tensors (where Triton imports), the reference elsewhere."""
    function = dequantize_triton if packed.payload.is_cuda and triton_available() else dequantize_reference
    return function(packed)


def _round_up(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Non-negative fp32 ``scale`` rounded up to ``dtype``'s mantissa (then exact in ``dtype``, fp16's normal range
    assumed): add all ones below the kept bits and clear them, as the Triton kernel does on the same bits."""
    drop = 23 - MANTISSA[dtype]
    bits = scale.contiguous().view(torch.int32)
    bits = (bits + ((1 << drop) - 1)) & ~((1 << drop) - 1)
    return bits.view(torch.float32).to(dtype)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``[..., n]`` int32 codes as ``[..., n * bits / 8]`` uint8, ``8 // bits`` a byte, the first lowest."""
    per = 8 // bits
    shifts = torch.arange(per, device=codes.device, dtype=torch.int32) * bits
    # the codes' bit fields are disjoint: their sum is their bitwise or
    return (codes.unflatten(-1, (codes.shape[-1] // per, per)) << shifts).sum(-1).to(torch.uint8)


def _unpack(payload: torch.Tensor, bits: int) -> torch.Tensor:
    """``_pack``'s inverse: ``[..., m]`` uint8 as ``[..., m * 8 / bits]`` int32 codes."""
    shifts = torch.arange(8 // bits, device=payload.device, dtype=torch.int32) * bits
    return ((payload.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)).flatten(-2)


def _axis(group_along: str) -> int:
    return -2 if group_along == "tokens" else -1


def _triton_module():
    # imported on first use: the reference must work where Triton is not installed
    return importlib.import_module("vlmzip.kernels._kv_quant_triton")


def _check_layout(shape: tuple[int, ...], bits: int, group_size: int, group_along: str, dtype: torch.dtype) -> None:
    """Raise ``ValueError`` naming the first of bits, layout, dtype, shape and group size that does not fit."""
    if bits not in BITS:
        raise ValueError(f"bits={bits!r} is not supported: use one of {', '.join(map(str, BITS))}")
    if group_along not in GROUP_ALONG:
        raise ValueError(
            f"group_along={group_along!r} is not a layout: use 'tokens' (keys: a scale per channel "
            "and group of tokens) or 'channels' (values: a scale per token and group of channels)"
        )
    if dtype not in MANTISSA:
        raise ValueError(f"cannot quantise a {dtype} tensor: pass bfloat16, float16 or float32")
    if len(shape) < 2:
        raise ValueError(f"expected a [..., S, d] tensor (tokens, channels last), got shape {shape}")
    length = shape[_axis(group_along)]
    per = 8 // bits
    if not isinstance(group_size, int) or group_size < 1 or group_size % per:
        raise ValueError(f"group_size={group_size!r} must be a positive multiple of {per} at {bits} bits "
                         f"({per} codes a byte, and no byte spans two groups)")  # fmt: skip
    if length % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {length} {group_along} of shape {shape}: "
                         f"quantise a multiple of {group_size} {group_along} (keep the rest in full precision) "
                         "or pick a group size that divides it")  # fmt: skip


def check_packed(packed: PackedKV) -> None:
    """Raise ``ValueError`` when a ``PackedKV``'s tensors do not make one packed tensor."""
    if packed.payload.dtype != torch.uint8:
        raise ValueError(f"the payload must be uint8 codes, got {packed.payload.dtype}")
    if packed.bits not in BITS:
        raise ValueError(f"bits={packed.bits!r} is not supported: use one of {', '.join(map(str, BITS))}")
    _check_layout(tuple(packed.shape), packed.bits, packed.group_size, packed.group_along, packed.dtype)
    shape = list(packed.shape)
    shape[_axis(packed.group_along)] //= packed.group_size
    for name, tensor in (("scale", packed.scale), ("zero", packed.zero)):
        if list(tensor.shape) != shape or tensor.dtype != packed.dtype:
            raise ValueError(f"{name} {tuple(tensor.shape)} {tensor.dtype} does not fit the payload "
                             f"{tuple(packed.payload.shape)}: expected {tuple(shape)} {packed.dtype}")  # fmt: skip
