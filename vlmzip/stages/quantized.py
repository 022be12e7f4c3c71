"""A quantized ``KVStore``: entries packed at 2, 4 or 8 bits (KIVI's layout) and a full-precision window.

``QuantizedKV`` holds one cache layer's keys and values ``[B, H, S, d]`` as a sequence of **packed parts**
(``PackedPart``: ``vlmzip.kernels.kv_quant`` codes of the same entries' keys, grouped along tokens, a scale and zero
point per channel and ``group_size`` tokens, and values, grouped along channels, per token and ``min(group_size, d)``
channels) followed by a **full-precision part** (the most recent entries, and any entries not a whole key group).

**Entry order.** Entry ``j`` of ``read()`` is part 0's entries, then part 1's, ..., then the full-precision ones; it
is column ``j`` of the cache layer's ``valid``, ``visual`` and ``positions`` rows. Nothing moves backwards in that
order: ``append`` adds entries at the end of the full-precision part and, once it holds ``residual`` entries and a
whole group more, moves its *oldest* whole groups to the end of the *last* packed part (KIVI's scheme), so the rows,
which the cache appends in the same step, keep describing the same entries. A store built from reordered entries
(ZipVL's low-bit then high-bit parts) is built with the index that reorders the rows alike (``mixed_store``).

Keys are grouped along tokens, so a packed part's length is a whole number of groups; whatever is not (the
remainder of a prompt) stays in the full-precision part. Left padding would widen a key group's range, so a store
built with ``valid`` first replaces each padding key by the sample's nearest valid one (padding is masked: what it
reads back is never attended). Decode steps read the store packed (``attend``: ``kernels.decode_attention`` over
each packed part and the window, joined by log-sum-exp); ``read`` dequantizes, for everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from vlmzip.errors import PolicyError
from vlmzip.kernels.decode_attention import decode_attention, merge_attention
from vlmzip.kernels.kv_quant import BITS, PackedKV, dequantize, quantize
from vlmzip.selection import gather_rows, nearest_valid, pack_left, top_k_mask

FULL_BITS = 16  # ``bits`` meaning "not quantized": the entries stay in the model's dtype


@dataclass(frozen=True)
class Quantization:
    """How a store quantizes the entries that leave its full-precision window: at ``bits``, in key groups of
    ``group_size`` tokens (value groups: ``min(group_size, d)`` channels), keeping the last ``residual`` entries
    (and less than a group more) in full precision."""

    bits: int
    group_size: int
    residual: int

    def packed_length(self, length: int) -> int:
        """How many of ``length`` entries (the oldest) a store packs: whole groups beyond the window."""
        return max(length - self.residual, 0) // self.group_size * self.group_size


def check_quantization(name: str, bits: int, group_size: int, residual: int) -> None:
    """Raise ``PolicyError`` naming the first of ``bits``, ``group_size`` and ``residual`` that does not fit."""
    if bits not in (*BITS, FULL_BITS):
        raise PolicyError(f"{name}: bits={bits} is not supported: use 2, 4 or 8 (16 keeps the model's dtype)")
    per_byte = 8 // bits if bits < FULL_BITS else 1
    if group_size < 1 or group_size % per_byte:
        raise PolicyError(
            f"{name}: group_size={group_size} must be a positive multiple of {per_byte} at {bits} bits "
            f"({per_byte} codes a byte, and no byte spans two groups; KIVI: 32)"
        )
    if residual < 0:
        raise PolicyError(f"{name}: residual={residual} must be >= 0 (the most recent entries kept in full precision)")


def check_against_model(name: str, quantization: Quantization, head_dim: int, context: int) -> None:
    """Raise ``PolicyError`` where the model cannot hold ``quantization``: value groups that do not divide the head
    dimension, or a window longer than the model's context (it would never quantize anything)."""
    group = min(quantization.group_size, head_dim)
    if head_dim and (head_dim % group or group % (8 // quantization.bits)):
        raise PolicyError(
            f"{name}: group_size={quantization.group_size} does not divide the head dimension {head_dim}: values "
            f"are grouped along each token's {head_dim} channels; use a divisor of {head_dim} (or {head_dim})"
        )
    if context and quantization.residual > context:
        raise PolicyError(
            f"{name}: residual={quantization.residual} is longer than the model's context ({context} positions): "
            f"the full-precision window would hold every entry; use residual <= {context} (KIVI: 128)"
        )


@dataclass(frozen=True)
class PackedPart:
    """The keys and values of the same entries, quantized at one bit width."""

    keys: PackedKV
    values: PackedKV

    @classmethod
    def quantize(cls, keys: torch.Tensor, values: torch.Tensor, bits: int, group_size: int) -> PackedPart:
        value_group = min(group_size, values.shape[-1])
        return cls(quantize(keys, bits, group_size, "tokens"), quantize(values, bits, value_group, "channels"))

    @property
    def length(self) -> int:
        return self.keys.shape[-2]

    @property
    def bits(self) -> int:
        return self.keys.bits

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dequantize(self.keys), dequantize(self.values)

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> PackedPart:
        """``function`` applied to every tensor (batch operations: every tensor is batch-first)."""
        return PackedPart(*(_map(packed, function) for packed in (self.keys, self.values)))

    def then(self, other: PackedPart) -> PackedPart:
        """This part's entries followed by ``other``'s (same bit width and groups): every tensor is
        concatenated along its token axis (-2 in both layouts, groups being whole bytes)."""
        return PackedPart(_cat(self.keys, other.keys), _cat(self.values, other.values))

    def tail(self, start: int) -> PackedPart:
        """The entries from ``start`` (a multiple of the key group) on."""
        keys, values = self.keys, self.values
        key_rows = (start * keys.bits // 8, start // keys.group_size)  # payload rows, scale rows
        return PackedPart(_rows(keys, *key_rows), _rows(values, start, start))

    def nbytes(self) -> dict[str, int]:
        key, value = self.keys.nbytes(), self.values.nbytes()
        return {name: getattr(key, name) + getattr(value, name) for name in ("payload", "scales", "zeros")}


class QuantizedKV:
    """Keys and values ``[B, H, S, d]`` as packed parts and a full-precision part (module docstring), growing by
    ``quantization`` (new entries' bit width, group size and window)."""

    def __init__(
        self,
        parts: tuple[PackedPart, ...],
        full_keys: torch.Tensor,
        full_values: torch.Tensor,
        quantization: Quantization,
    ) -> None:
        self.parts = tuple(part for part in parts if part.length)
        self.full_keys, self.full_values, self.quantization = full_keys, full_values, quantization

    @classmethod
    def build(
        cls, keys: torch.Tensor, values: torch.Tensor, quantization: Quantization, valid: torch.Tensor | None = None
    ) -> QuantizedKV:
        """KIVI's store of ``keys``/``values``: every entry but the window packed (``valid [B, S]``: padding keys
        are replaced by their sample's nearest valid key first)."""
        if valid is not None:
            keys = gather_rows(keys, nearest_valid(valid.to(keys.device)), dim=2)
        return cls((), keys[:, :, :0], values[:, :, :0], quantization).append(keys, values)

    @property
    def packed_length(self) -> int:
        return sum(part.length for part in self.parts)

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.parts:
            return self.full_keys, self.full_values
        pieces = [part.read() for part in self.parts]
        keys = torch.cat([*(k for k, _ in pieces), self.full_keys], dim=-2)
        return keys, torch.cat([*(v for _, v in pieces), self.full_values], dim=-2)

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> QuantizedKV:
        full_keys = torch.cat([self.full_keys, keys], dim=-2) if self.full_keys.shape[-2] else keys
        full_values = torch.cat([self.full_values, values], dim=-2) if self.full_values.shape[-2] else values
        spill = self.quantization.packed_length(full_keys.shape[-2])
        if not spill:
            return QuantizedKV(self.parts, full_keys, full_values, self.quantization)
        bits, group = self.quantization.bits, self.quantization.group_size
        moved = PackedPart.quantize(full_keys[:, :, :spill], full_values[:, :, :spill], bits, group)
        parts = self.parts
        if parts and parts[-1].bits == bits:  # the window's oldest entries follow the last part's
            parts = (*parts[:-1], parts[-1].then(moved))
        else:
            parts = (*parts, moved)
        # copies: a view would keep the spilled full-precision entries alive
        return QuantizedKV(parts, full_keys[:, :, spill:].clone(), full_values[:, :, spill:].clone(), self.quantization)

    def gather(self, index: torch.Tensor) -> QuantizedKV:
        """Entries ``index [B, S']``: dequantized, gathered and quantized again at the store's bit width (no built-in
        method evicts from a quantized layer; a second quantization adds at most half of the new scale)."""
        keys, values = self.read()
        return QuantizedKV.build(gather_rows(keys, index, 2), gather_rows(values, index, 2), self.quantization)

    def select_batch(self, index: torch.Tensor) -> QuantizedKV:
        index = index.to(self.full_keys.device)
        return self._map(lambda tensor: tensor.index_select(0, index))

    def repeat_batch(self, repeats: int) -> QuantizedKV:
        return self._map(lambda tensor: tensor.repeat_interleave(repeats, dim=0))

    def keep_last(self, count: int) -> QuantizedKV:
        """The last ``count`` entries: exact where the cut falls in the window or on a key group of the last packed
        part; otherwise the kept entries are quantized again (sliding-window layers, which keep the last entries,
        are never quantized by the built-in methods)."""
        full = self.full_keys.shape[-2]
        drop = self.packed_length + full - count
        if drop <= 0:
            return self
        if count <= full:
            window = slice(full - count, full)
            return QuantizedKV((), self.full_keys[:, :, window], self.full_values[:, :, window], self.quantization)
        last = self.parts[-1]
        start = last.length - (count - full)  # of the last part
        if start >= 0 and start % last.keys.group_size == 0:
            return QuantizedKV((last.tail(start),), self.full_keys, self.full_values, self.quantization)
        keys, values = self.read()
        return QuantizedKV.build(keys[:, :, -count:], values[:, :, -count:], self.quantization)

    def attend(self, query: torch.Tensor, scaling: float, valid: torch.Tensor) -> torch.Tensor | None:
        """Decode attention of ``query [B, Hq, q, d]`` over every entry (``valid [B, S]``: the layer's rows),
        ``[B, Hq, q, d]``, read packed: one ``decode_attention`` per packed part (the window with the last), joined
        by log-sum-exp. Rows are not causal among themselves (a caller with ``q > 1`` uses ``read``). ``None`` when
        nothing is packed: the model's own attention then reads ``read()``, exactly as for a dense store."""
        if not self.parts:
            return None
        results, start, several = [], 0, len(self.parts) > 1
        for number, part in enumerate(self.parts, start=1):
            window = self.full_keys.shape[-2] if number == len(self.parts) else 0  # the window goes with the last
            packed_valid = valid[:, start : start + part.length]
            start += part.length
            results.append(
                decode_attention(
                    query,
                    part.keys,
                    part.values,
                    self.full_keys[:, :, :window],
                    self.full_values[:, :, :window],
                    scaling,
                    packed_valid=packed_valid,
                    full_valid=valid[:, start : start + window],
                    return_lse=several,
                )  # fmt: skip
            )
            start += window
        return merge_attention(results) if several else results[0]

    @property
    def nbytes(self) -> int:
        return sum(self.byte_parts().values())

    def byte_parts(self) -> dict[str, int]:
        """Bytes of the packed codes (``payload``), ``scales``, ``zeros`` (zero points) and the ``full``-precision
        part, padding included (what the tensors occupy; ``kernels.kv_quant.packed_nbytes`` of each part)."""
        total = {"payload": 0, "scales": 0, "zeros": 0}
        for part in self.parts:
            for name, count in part.nbytes().items():
                total[name] += count
        return {**total, "full": self.full_keys.nbytes + self.full_values.nbytes}

    def _map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> QuantizedKV:
        parts = tuple(part.map(function) for part in self.parts)
        return QuantizedKV(parts, function(self.full_keys), function(self.full_values), self.quantization)


def mixed_store(
    keys: torch.Tensor,
    values: torch.Tensor,
    valid: torch.Tensor,
    scores: torch.Tensor,
    important: torch.Tensor,
    quantization: Quantization,
    low_bits: int,
) -> tuple[torch.Tensor, torch.Tensor, QuantizedKV]:
    """ZipVL's mixed precision of entries ``[B, H, S, d]``: outside the window, the ``important [B, S]`` ones at
    ``quantization.bits`` and the rest at ``low_bits``. Returns ``(index [B, S], valid [B, S], store)``: the store
    holds entry ``index[b, j]`` at ``j``, in the order low-bit part, high-bit part, window (generated entries then
    join the high-bit part), each part in sequence order. The high-bit part is as wide as the batch's most
    important entries (rounded up to a key group); a sample with fewer fills it with its next entries by
    ``scores``, padding last, so ``valid`` may have padding anywhere."""
    batch, width = valid.shape
    packed = quantization.packed_length(width)
    group = quantization.group_size
    eligible = (torch.arange(width, device=valid.device) < packed).expand(batch, -1)
    needed = int((important & eligible).sum(dim=1).max()) if batch else 0
    high_width = min(packed, -(-needed // group) * group)
    ranked = torch.where(valid, scores.float(), -1.0)  # attention is >= 0: padding ranks last
    high = top_k_mask(ranked, eligible, torch.full((batch,), high_width, device=valid.device))
    low_width = packed - high_width
    window = torch.arange(packed, width, device=valid.device).expand(batch, -1)
    index = torch.cat([pack_left(eligible & ~high, low_width)[0], pack_left(high, high_width)[0], window], dim=1)
    valid = valid.gather(1, index)
    keys = gather_rows(gather_rows(keys, index, 2), nearest_valid(valid).to(keys.device), 2)
    values = gather_rows(values, index, 2)
    parts = (
        PackedPart.quantize(keys[:, :, :low_width], values[:, :, :low_width], low_bits, group),
        PackedPart.quantize(keys[:, :, low_width:packed], values[:, :, low_width:packed], quantization.bits, group),
    )
    return index, valid, QuantizedKV(parts, keys[:, :, packed:], values[:, :, packed:], quantization)


def _map(packed: PackedKV, function: Callable[[torch.Tensor], torch.Tensor]) -> PackedKV:
    return replace(packed, payload=function(packed.payload), scale=function(packed.scale), zero=function(packed.zero))


def _cat(first: PackedKV, second: PackedKV) -> PackedKV:
    joined = (torch.cat([a, b], dim=-2) for a, b in ((first.payload, second.payload), (first.scale, second.scale),
                                                       (first.zero, second.zero)))  # fmt: skip
    return replace(first, **dict(zip(("payload", "scale", "zero"), joined)))


def _rows(packed: PackedKV, payload_from: int, scales_from: int) -> PackedKV:
    return replace(
        packed,
        payload=packed.payload[..., payload_from:, :],
        scale=packed.scale[..., scales_from:, :],
        zero=packed.zero[..., scales_from:, :],
    )
