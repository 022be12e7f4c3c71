"""Block-diagonal attention over a packed sequence of chunks, batched: Qwen's vision windows and frames.

A Qwen-VL vision tower packs all its patches into one sequence ``[1, H, S, D]`` that attends chunk by chunk
(``cu_seqlens``: one chunk per frame, or per window in Qwen2.5-VL's windowed blocks). Its ``sdpa``/``eager`` path
makes one attention call per chunk: ~600 calls a windowed layer for 64 frames, each too small to fill a GPU (on an
H200 one batched call for such a layer took 0.17 ms instead of 8.7 ms). Here the chunks go through a few batched
calls of the same attention function, ``attend``:

* ``"grouped"`` (the default): the chunks of each length in one call ``[n_chunks, H, L, D]``. Most windows are
  equal (only edge windows differ, and full-attention layers have one chunk per frame), so it is usually one call,
  two to four when a grid does not divide into whole windows. Each chunk sees exactly its own keys, so every
  output element is computed from the same numbers as in the per-chunk loop (bit-identical on the CPU in fp32,
  ``tests/test_qwen_tower.py``).
* ``"padded"``: every chunk padded to the longest, padding keys masked, one call. One call whatever the lengths,
  but it computes the padding too and the mask keeps SDPA off its fastest GPU kernels; exact up to rounding.
* ``"bucketed"``: chunks grouped by the power of two at or above their length, each padded to it (keys masked where
  any is padded): one call per bucket, at most twice the work of the chunks themselves. Pruning inside the tower
  leaves windows and frames of every length (a window keeps 0-16 of its 16 merge units), where "grouped" makes one
  call per distinct length (dozens a layer) and "padded" pads a 40-row window to a whole 576-row frame. Equal
  lengths that are powers of two (whole windows, edge windows) make the same calls as "grouped", bit for bit.

Which is faster depends on the GPU and the shapes: ``python -m vlmzip.kernels.bench tower`` times both against the
per-chunk loop on a Qwen2.5-VL-7B-like 64-frame video; ``DEFAULT_STRATEGY`` is the knob a measurement sets.
``chunk_attention_loop`` is the reference (the model's own per-chunk path). This module imports nothing of vlmzip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = ["DEFAULT_STRATEGY", "STRATEGIES", "ChunkPlan", "chunk_attention", "chunk_attention_loop", "chunk_plan"]

#: ``attend(query, key, value, mask) -> out``: dense attention of a batch of chunks, ``[n, H, L, D]`` each, with an
#: additive key mask ``[n, 1, 1, L]`` or ``None``; returns ``[n, L, H, D]`` (transformers' attention functions' layout)
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

STRATEGIES = ("grouped", "padded", "bucketed")
#: the strategy ``chunk_attention`` uses when none is given, set by measurement (``python -m vlmzip.kernels.bench
#: tower``): "grouped" is exact, and a first run on one H200 (bf16) found it as fast as "padded" (0.25 against
#: 0.25 ms a windowed layer of 64 frames, 0.89 against 0.92 ms with edge windows; the per-window loop: 15.7 ms)
DEFAULT_STRATEGY = "grouped"


@dataclass(frozen=True)
class ChunkPlan:
    """Where each chunk of a packed sequence of ``total`` elements lies, in the forms the strategies index by.

    ``groups``: per distinct chunk length ``L``, ``(L, n, index)``: the ``n`` chunks of that length, ``index`` the
    ``n * L`` positions they cover in order (``None`` when every chunk has length ``L``: plain views, no gather).
    """

    total: int
    longest: int
    groups: tuple[tuple[int, int, torch.Tensor | None], ...]
    cu_seqlens: torch.Tensor  # on the device of the index tensors

    @cached_property
    def padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(gather [n * longest], valid [n, longest], unpad [total])``: padded rows' source positions (padding
        reads a real one and is masked), which padded slots are real, and each position's padded slot."""
        starts, ends = self.cu_seqlens[:-1].long(), self.cu_seqlens[1:].long()
        offsets = torch.arange(self.longest, device=starts.device)
        source = starts[:, None] + offsets
        valid = source < ends[:, None]
        gather = torch.where(valid, source, starts[:, None]).flatten()
        return gather, valid, valid.flatten().nonzero().squeeze(1)

    @cached_property
    def buckets(self) -> tuple[tuple[int, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor], ...]:
        """Per power of two ``L``: ``(L, gather [n * L], valid [n, L] or None, slots [m], positions [m])`` for the
        ``n`` chunks of length in ``(L / 2, L]``: padded rows' source positions (padding reads the chunk's first),
        which slots are real (``None``: none is padded), and where each real slot's row goes."""
        members: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
        for length, n, index in self.groups:
            if index is None:  # the one group of equal chunks: they cover the sequence in order
                index = torch.arange(n * length, device=self.cu_seqlens.device)
            members.setdefault(1 << (length - 1).bit_length(), []).append((length, n, index))
        buckets = []
        for size, groups in sorted(members.items()):
            gathers, valids, positions = [], [], []
            for length, n, index in groups:
                chunks = index.view(n, length)
                gathers.append(torch.cat([chunks, chunks[:, :1].expand(n, size - length)], dim=1))
                valids.append((torch.arange(size, device=index.device) < length).expand(n, size))
                positions.append(index)
            valid = torch.cat(valids)
            slots = valid.flatten().nonzero().squeeze(1)
            padded = any(length != size for length, _, _ in groups)
            buckets.append((size, torch.cat(gathers).flatten(), valid if padded else None, slots, torch.cat(positions)))
        return tuple(buckets)


def chunk_plan(
    cu_seqlens: torch.Tensor,
    total: int | None = None,
    longest: int | None = None,
    device: torch.device | str | None = None,
) -> ChunkPlan:
    """The plan of a packed sequence of ``total`` elements split at ``cu_seqlens`` (``[n + 1]``, 0 to ``total``).

    Given ``total`` (the sequence's length, known from its shape) and ``longest`` (the longest chunk, which Qwen's
    towers compute once per forward for flash backends), equal chunks are recognised without reading
    ``cu_seqlens`` on the host: ``n`` chunks of at most ``longest`` that fill ``n * longest`` elements all have that
    length. Otherwise the lengths are read once (one host sync). ``device``: where the index tensors go (the
    attention's device: a tower may get its ``grid_thw``, hence ``cu_seqlens``, on the CPU); default: the bounds'.
    """
    device = cu_seqlens.device if device is None else torch.device(device)
    n = cu_seqlens.numel() - 1
    if total is not None and longest is not None and n > 0 and n * int(longest) == total:
        return ChunkPlan(total, int(longest), ((int(longest), n, None),), cu_seqlens.to(device))
    bounds = cu_seqlens.tolist()  # the one host read
    lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    total = bounds[-1] if bounds else 0
    distinct = sorted(set(lengths) - {0})
    if len(distinct) == 1 and 0 not in lengths:
        return ChunkPlan(total, distinct[0], ((distinct[0], n, None),), cu_seqlens.to(device))
    groups = []
    for length in distinct:
        starts = torch.tensor([start for start, size in zip(bounds, lengths) if size == length], device=device)
        index = (starts[:, None] + torch.arange(length, device=device)).flatten()
        groups.append((length, len(starts), index))
    return ChunkPlan(total, max(distinct, default=0), tuple(groups), cu_seqlens.to(device))


def chunk_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: ChunkPlan,
    attend: Attend,
    strategy: str | None = None,
    contiguous: bool = False,
) -> torch.Tensor:
    """Attention of each chunk of ``plan`` over its own keys, batched; ``[1, H, S, D]`` in, ``[1, S, H, D]`` out.

    ``contiguous``: hand ``attend`` contiguous chunks. Strided ones are free and SDPA takes them as they are, but
    a plain ``matmul`` (eager attention) copies a batch whose dims do not merge, flipping the key operand's
    transpose, and small CPU matmuls then round differently from the per-chunk loop's; contiguous chunks take the
    loop's path (bit-identical on the CPU).
    """
    strategy = strategy or DEFAULT_STRATEGY
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown chunk-attention strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    _, heads, total, dim = query.shape
    if total != plan.total:
        raise ValueError(f"the chunks cover {plan.total} positions but the sequence has {total}")
    # [S, H, D]: the layout the tower built them in (a transpose of it), kept by the gathers below, so that a chunk
    # reaches ``attend`` with the strides it has in the per-chunk loop (small CPU matmuls round by layout)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    dims = value.shape[-1]

    def chunks(index: torch.Tensor | None, n: int, length: int) -> list[torch.Tensor]:
        """``[n, H, length, D]`` views (or gathered copies at ``index``) of the chunks of q, k and v."""
        parts = [(t if index is None else t.index_select(0, index)).unflatten(0, (n, length)).transpose(1, 2)
                 for t in (q, k, v)]  # fmt: skip
        return [t.contiguous() for t in parts] if contiguous else parts

    if strategy == "padded" and len(plan.groups) > 1:
        gather, valid, unpad = plan.padded
        n = valid.shape[0]
        out = attend(*chunks(gather, n, plan.longest), _key_mask(valid, query.dtype))
        return out.reshape(n * plan.longest, heads, dims).index_select(0, unpad).unsqueeze(0)
    if len(plan.groups) == 1 and plan.groups[0][2] is None:  # equal chunks: views, one call, no copy back
        length, n, _ = plan.groups[0]
        return attend(*chunks(None, n, length), None).reshape(1, total, heads, dims)
    out = query.new_empty(total, heads, dims)
    if strategy == "bucketed":
        for size, gather, valid, slots, positions in plan.buckets:
            n = gather.numel() // size
            mask = None if valid is None else _key_mask(valid, query.dtype)
            rows = attend(*chunks(gather, n, size), mask).reshape(n * size, heads, dims)
            out.index_copy_(0, positions, rows if valid is None else rows.index_select(0, slots))
        return out.unsqueeze(0)
    for length, n, index in plan.groups:
        out.index_copy_(0, index, attend(*chunks(index, n, length), None).reshape(n * length, heads, dims))
    return out.unsqueeze(0)


def _key_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[n, 1, 1, L]`` additive mask hiding the padded keys of ``valid [n, L]``."""
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~valid, torch.finfo(dtype).min)[:, None, None, :]


def chunk_attention_loop(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor, attend: Attend
) -> torch.Tensor:
    """The reference: one ``attend`` call per chunk, as Qwen's towers run a non-flash backend."""
    lengths = cu_seqlens.diff().tolist()
    parts = [attend(q, k, v, None) for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)))]
    return torch.cat(parts, dim=1)
