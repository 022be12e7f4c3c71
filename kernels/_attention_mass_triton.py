"""Triton side of ``vlmzip.kernels.attention_mass``: the three kernels and their launch.

Called only through ``attention_mass.attention_mass_triton``, which checks the arguments first. Two passes over
the key blocks, so the ``[Q, K]`` attention matrix never exists:

1. ``_row_stats``, one program per (batch, head, query block): each row's running maximum and sum of
   ``exp(logit - max)`` over its visible keys (online softmax), stored ``[B, H, Q]`` as one offset, the
   ``log2`` of the normaliser (or taken from the attention's own log-sum-exp, skipping this pass).
2. ``_mass`` (one program per (batch, key block), looping over heads and query blocks, so each output element
   is written once, in a fixed order: deterministic, no atomics) or ``_probs`` (one program per (batch, query
   block, key block), looping over heads) recompute the logits and turn them into probabilities with the row
   statistics.

Loops run only over the blocks a mask can make visible (``_key_block_ranges``, ``_query_block_ranges``): causal
positions and sorted segment ids bound them, so a packed sequence of many short windows costs the windows, not
the square of the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# @triton.jit reads TRITON_INTERPRET when it decorates, i.e. when this module executes (Triton 3.6).
INTERPRETED = bool(triton.knobs.runtime.interpret)
_BIG = 2**62  # pads block minima and maxima of positions and segment ids
_LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _logits(
    q, k, b, h, rows, cols, n_q, n_k, scaling, softcap,
    pos_ptr, pos_sb, window, valid_ptr, valid_sb, qseg_ptr, qseg_sb, kseg_ptr, kseg_sb,
    mask_ptr, mask_sb, mask_sh, mask_sq, mask_sk,
    SOFTCAP: tl.constexpr, POSITIONS: tl.constexpr, WINDOW: tl.constexpr, VALID: tl.constexpr,
    SEGMENTS: tl.constexpr, MASK: tl.constexpr, PRECISION: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    """Logits of a ``[BQ, BK]`` tile in base-2 units (for ``exp2``); with ``MASKED``, ``-inf`` where a key is not
    visible (keys past ``n_k`` included). Without it nothing is masked: the caller makes padding harmless."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if SOFTCAP:
        # tanh through exp: exact enough in fp32 and available in the interpreter as on the GPU
        s = (softcap * _LOG2E) * (1.0 - 2.0 / (tl.exp(2.0 * s * (scaling / softcap)) + 1.0))
    else:
        s = s * (scaling * _LOG2E)
    visible = (rows[:, None] < n_q) & (cols[None, :] < n_k)
    if MASK != 0:
        offsets = b * mask_sb + h * mask_sh + rows[:, None] * mask_sq + cols[None, :] * mask_sk
        dense = tl.load(mask_ptr + offsets, mask=visible, other=0)
        if MASK == 1:
            visible = visible & (dense != 0)
        else:  # additive, as the reference adds it: a row of huge negatives stays a softmax over them
            s = s + dense.to(tl.float32) * _LOG2E
    if POSITIONS:
        pos = tl.load(pos_ptr + b * pos_sb + rows, mask=rows < n_q, other=-1)
        visible = visible & (cols[None, :] <= pos[:, None])
        if WINDOW:
            visible = visible & (cols[None, :] > pos[:, None] - window)
    if VALID:
        valid = tl.load(valid_ptr + b * valid_sb + cols, mask=cols < n_k, other=0)
        visible = visible & (valid[None, :] != 0)
    if SEGMENTS:
        qseg = tl.load(qseg_ptr + b * qseg_sb + rows, mask=rows < n_q, other=-1)
        kseg = tl.load(kseg_ptr + b * kseg_sb + cols, mask=cols < n_k, other=-2)
        visible = visible & (qseg[:, None] == kseg[None, :])
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    return s


@triton.jit
def _load_rows(ptr, index, n, stride, dims, head_dim, UPCAST: tl.constexpr):
    """Rows ``index`` of an ``[n, head_dim]`` matrix, zero-padded to ``[len(index), BLOCK_D]``."""
    valid = (index[:, None] < n) & (dims[None, :] < head_dim)
    tile = tl.load(ptr + index[:, None] * stride + dims[None, :], mask=valid, other=0.0)
    return tile.to(tl.float32) if UPCAST else tile


@triton.jit
def _row_stats(
    q_ptr, q_sb, q_sh, q_sq, k_ptr, k_sb, k_sh, k_sk, offset_ptr, lo_ptr, hi_ptr,
    n_q, n_k, heads, groups, head_dim, scaling, softcap,
    pos_ptr, pos_sb, window, valid_ptr, valid_sb, qseg_ptr, qseg_sb, kseg_ptr, kseg_sb,
    mask_ptr, mask_sb, mask_sh, mask_sq, mask_sk,
    SOFTCAP: tl.constexpr, POSITIONS: tl.constexpr, WINDOW: tl.constexpr, VALID: tl.constexpr,
    SEGMENTS: tl.constexpr, MASK: tl.constexpr, PRECISION: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # int64 batch index: offsets past 2**31 elements must not wrap
    block, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    b, h = bh // heads, bh % heads
    rows = block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr + b * q_sb + h * q_sh, rows, n_q, q_sq, dims, head_dim, UPCAST)
    k_base = k_ptr + b * k_sb + (h // groups) * k_sh
    n_blocks = tl.cdiv(n_q, BLOCK_Q)
    lo, hi = tl.load(lo_ptr + b * n_blocks + block), tl.load(hi_ptr + b * n_blocks + block)
    row_max = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_Q], tl.float32)
    for key_block in range(lo, hi):
        cols = key_block * BLOCK_K + tl.arange(0, BLOCK_K)
        k = _load_rows(k_base, cols, n_k, k_sk, dims, head_dim, UPCAST)
        s = _logits(
            q, k, b, h, rows, cols, n_q, n_k, scaling, softcap,
            pos_ptr, pos_sb, window, valid_ptr, valid_sb, qseg_ptr, qseg_sb, kseg_ptr, kseg_sb,
            mask_ptr, mask_sb, mask_sh, mask_sq, mask_sk,
            SOFTCAP, POSITIONS, WINDOW, VALID, SEGMENTS, MASK, PRECISION, MASKED,
        )  # fmt: skip
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        # a row with nothing visible yet keeps max -inf; subtracting 0 instead avoids inf - inf
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        row_sum = row_sum * tl.exp2(row_max - shift) + tl.sum(tl.exp2(s - shift[:, None]), axis=1)
        row_max = new_max
    # the second pass computes exp2(logit - offset): one subtraction per logit for the softmax. A row that sees no
    # key gets +inf, so its (all -inf) logits, and those of padding rows, give exactly 0.
    seen = row_sum > 0
    offset = tl.where(seen, row_max + tl.log2(tl.where(seen, row_sum, 1.0)), float("inf"))
    tl.store(offset_ptr + bh * n_q + rows, offset, mask=rows < n_q)


@triton.jit
def _probabilities(s, offset_ptr, stats_row, rows, n_q):
    """Softmax probabilities of a tile from its rows' offsets (``log2`` of the normaliser); 0 for rows with no
    visible key and for rows past ``n_q``, whose offset is +inf."""
    offset = tl.load(offset_ptr + stats_row + rows, mask=rows < n_q, other=float("inf"))
    return tl.exp2(s - offset[:, None])


@triton.jit
def _mass(
    q_ptr, q_sb, q_sh, q_sq, k_ptr, k_sb, k_sh, k_sk, offset_ptr, lo_ptr, hi_ptr, out_ptr, out_scale,
    n_q, n_k, heads, groups, head_dim, scaling, softcap,
    pos_ptr, pos_sb, window, valid_ptr, valid_sb, qseg_ptr, qseg_sb, kseg_ptr, kseg_sb,
    mask_ptr, mask_sb, mask_sh, mask_sq, mask_sk,
    SOFTCAP: tl.constexpr, POSITIONS: tl.constexpr, WINDOW: tl.constexpr, VALID: tl.constexpr,
    SEGMENTS: tl.constexpr, MASK: tl.constexpr, PRECISION: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    block, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    cols = block * BLOCK_K + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, BLOCK_D)
    n_blocks = tl.cdiv(n_k, BLOCK_K)
    lo, hi = tl.load(lo_ptr + b * n_blocks + block), tl.load(hi_ptr + b * n_blocks + block)
    # summed over rows once at the end: a reduction across the tile's rows per step would cost more than the step
    total = tl.zeros([BLOCK_Q, BLOCK_K], tl.float32)
    for kv_head in range(0, heads // groups):
        # one key tile serves every query head of its group
        k = _load_rows(k_ptr + b * k_sb + kv_head * k_sh, cols, n_k, k_sk, dims, head_dim, UPCAST)
        for h in range(kv_head * groups, (kv_head + 1) * groups):
            for query_block in range(lo, hi):
                rows = query_block * BLOCK_Q + tl.arange(0, BLOCK_Q)
                q = _load_rows(q_ptr + b * q_sb + h * q_sh, rows, n_q, q_sq, dims, head_dim, UPCAST)
                s = _logits(
                    q, k, b, h, rows, cols, n_q, n_k, scaling, softcap,
                    pos_ptr, pos_sb, window, valid_ptr, valid_sb, qseg_ptr, qseg_sb, kseg_ptr, kseg_sb,
                    mask_ptr, mask_sb, mask_sh, mask_sq, mask_sk,
                    SOFTCAP, POSITIONS, WINDOW, VALID, SEGMENTS, MASK, PRECISION, MASKED,
                )  # fmt: skip
                total += _probabilities(s, offset_ptr, (b * heads + h) * n_q, rows, n_q)
    tl.store(out_ptr + b * n_k + cols, tl.sum(total, axis=0) * out_scale, mask=cols < n_k)


@triton.jit
def _probs(
    q_ptr, q_sb, q_sh, q_sq, k_ptr, k_sb, k_sh, k_sk, offset_ptr, lo_ptr, hi_ptr, out_ptr, out_scale,
    n_q, n_k, heads, groups, head_dim, scaling, softcap,
    pos_ptr, pos_sb, window, valid_ptr, valid_sb, qseg_ptr, qseg_sb, kseg_ptr, kseg_sb,
    mask_ptr, mask_sb, mask_sh, mask_sq, mask_sk,
    SOFTCAP: tl.constexpr, POSITIONS: tl.constexpr, WINDOW: tl.constexpr, VALID: tl.constexpr,
    SEGMENTS: tl.constexpr, MASK: tl.constexpr, PRECISION: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    key_block, query_block, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rows = query_block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cols = key_block * BLOCK_K + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, BLOCK_D)
    n_blocks = tl.cdiv(n_q, BLOCK_Q)
    lo, hi = tl.load(lo_ptr + b * n_blocks + query_block), tl.load(hi_ptr + b * n_blocks + query_block)
    # a tile no row of the block can see is written as zeros without computing it
    active = (key_block >= lo) & (key_block < hi)
    total = tl.zeros([BLOCK_Q, BLOCK_K], tl.float32)
    for h in range(0, tl.where(active, heads, 0)):
        q = _load_rows(q_ptr + b * q_sb + h * q_sh, rows, n_q, q_sq, dims, head_dim, UPCAST)
        k = _load_rows(k_ptr + b * k_sb + (h // groups) * k_sh, cols, n_k, k_sk, dims, head_dim, UPCAST)
        s = _logits(
            q, k, b, h, rows, cols, n_q, n_k, scaling, softcap,
            pos_ptr, pos_sb, window, valid_ptr, valid_sb, qseg_ptr, qseg_sb, kseg_ptr, kseg_sb,
            mask_ptr, mask_sb, mask_sh, mask_sq, mask_sk,
            SOFTCAP, POSITIONS, WINDOW, VALID, SEGMENTS, MASK, PRECISION, MASKED,
        )  # fmt: skip
        total += _probabilities(s, offset_ptr, (b * heads + h) * n_q, rows, n_q)
    out = out_ptr + b * n_q * n_k + rows[:, None] * n_k + cols[None, :]
    tl.store(out, total * out_scale, mask=(rows[:, None] < n_q) & (cols[None, :] < n_k))


@dataclass(frozen=True)
class Tiles:
    """Tile shape and launch parameters of one pass."""

    block_q: int
    block_k: int
    warps: int = 4
    stages: int = 2


def default_tiles(n_q: int, per_query: bool) -> tuple[Tiles, Tiles]:
    """Tiles of the row-statistics pass and of the output pass. For the all-rows mass (``Q * K`` logits twice,
    bound by the exponentials) the fastest of a sweep on an H200 over SigLIP at batch 32 and Qwen's window and
    full-attention layers (docs/performance.md); for a few rows (reading the keys) narrow query tiles."""
    block_q = min(64, max(16, triton.next_power_of_2(n_q)))
    if per_query or n_q < 512:
        return Tiles(block_q, 64), Tiles(block_q, 64)
    return Tiles(128, 64), Tiles(64, 128)


def launch(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    *,
    softcap: float | None,
    query_positions: torch.Tensor | None,
    window: int | None,
    key_valid: torch.Tensor | None,
    query_segments: torch.Tensor | None,
    key_segments: torch.Tensor | None,
    mask: torch.Tensor | None,
    per_query: bool,
    reduce: str,
    log_normalizer: torch.Tensor | None = None,
    tiles: tuple[Tiles, Tiles] | None = None,
) -> torch.Tensor:
    """Run both passes on checked, non-empty arguments (see ``attention_mass.attention_mass_reference``); with
    ``log_normalizer`` (each row's natural log-sum-exp, ``[B, H, Q]``) only the second."""
    batch, heads, n_q, head_dim = query.shape
    n_k, groups = key.shape[2], heads // key.shape[1]
    query, key = _unit_stride(query), _unit_stride(key)
    stats_tiles, out_tiles = tiles or default_tiles(n_q, per_query)
    upcast = INTERPRETED and query.dtype == torch.bfloat16  # the interpreter's dot reads bf16 as raw integers
    precision = "ieee" if query.dtype == torch.float32 or upcast else "tf32"  # no TF32 rounding of fp32 inputs
    unused = query.new_zeros(1, dtype=torch.int32)
    positions = _unit_stride(query_positions) if query_positions is not None else None
    segments = None if query_segments is None else (_unit_stride(query_segments), _unit_stride(key_segments))
    masks = (
        *_row_arg(positions, unused), window or 0,
        *_row_arg(None if key_valid is None else _unit_stride(key_valid).view(torch.uint8), unused),
        *_row_arg(None if segments is None else segments[0], unused),
        *_row_arg(None if segments is None else segments[1], unused),
        *_dense_arg(mask, unused),
    )  # fmt: skip
    flags = {
        "SOFTCAP": softcap is not None, "POSITIONS": positions is not None, "WINDOW": bool(window),
        "VALID": key_valid is not None, "SEGMENTS": segments is not None,
        "MASK": 0 if mask is None else 1 if mask.dtype == torch.bool else 2,
        "PRECISION": precision, "UPCAST": upcast, "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
    }  # fmt: skip
    tensors = (query, *query.stride()[:3], key, *key.stride()[:3])
    sizes = (n_q, n_k, heads, groups, head_dim, float(scaling), float(softcap or 1.0))
    ranges = (n_q, n_k, positions, window, segments, batch, query.device)

    masked = any(flags[name] for name in ("POSITIONS", "VALID", "SEGMENTS")) or flags["MASK"] == 1

    def run(kernel, grid, pass_tiles: Tiles, *args, bounds: bool = False) -> None:
        shape = {"BLOCK_Q": pass_tiles.block_q, "BLOCK_K": pass_tiles.block_k, "MASKED": masked or bounds}
        launch_args = {"num_warps": pass_tiles.warps, "num_stages": pass_tiles.stages}
        kernel[grid](*tensors, *args, *sizes, *masks, **flags, **shape, **launch_args)

    if log_normalizer is None:
        offset = torch.empty(batch, heads, n_q, dtype=torch.float32, device=query.device)
        lo, hi = _key_block_ranges(*ranges, stats_tiles.block_q, stats_tiles.block_k)
        grid = (triton.cdiv(n_q, stats_tiles.block_q), batch * heads)
        # keys past n_k would join the normaliser; the second pass never stores them, and needs no bounds
        run(_row_stats, grid, stats_tiles, offset, lo, hi, bounds=n_k % stats_tiles.block_k != 0)
    else:  # exp(logit - lse) = exp2(logit * log2(e) - lse * log2(e)); a row that sees nothing: +inf, as above
        lse = log_normalizer.float()
        offset = torch.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634).contiguous()
    if per_query:
        out = torch.empty(batch, n_q, n_k, dtype=torch.float32, device=query.device)
        lo, hi = _key_block_ranges(*ranges, out_tiles.block_q, out_tiles.block_k)
        grid = (triton.cdiv(n_k, out_tiles.block_k), triton.cdiv(n_q, out_tiles.block_q), batch)
        run(_probs, grid, out_tiles, offset, lo, hi, out, 1.0 / heads)
        return out
    lo, hi = _query_block_ranges(*ranges, out_tiles.block_q, out_tiles.block_k)
    out = torch.empty(batch, n_k, dtype=torch.float32, device=query.device)
    scale = 1.0 / (heads * n_q) if reduce == "mean" else 1.0 / heads
    run(_mass, (triton.cdiv(n_k, out_tiles.block_k), batch), out_tiles, offset, lo, hi, out, scale)
    return out


def _unit_stride(tensor: torch.Tensor) -> torch.Tensor:
    """The kernels step the last dimension by 1 (a copy only for the rare tensor that does not)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _row_arg(tensor: torch.Tensor | None, unused: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A ``[B, n]`` per-row argument as (pointer, batch stride); a placeholder when absent."""
    return (unused, 0) if tensor is None else (tensor, tensor.stride(0) if tensor.shape[0] > 1 else 0)


def _dense_arg(mask: torch.Tensor | None, unused: torch.Tensor) -> tuple:
    """A dense mask broadcastable to ``[B, H, Q, K]`` as pointer and strides, 0 along broadcast dimensions."""
    if mask is None:
        return (unused, 0, 0, 0, 0)
    mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    return (mask, *(stride if size > 1 else 0 for size, stride in zip(mask.shape, mask.stride())))


def _blocks(values: torch.Tensor, block: int, pad: int) -> torch.Tensor:
    """``[B, n]`` as ``[B, ceil(n / block), block]``, the tail filled with ``pad``."""
    batch, n = values.shape
    count = triton.cdiv(n, block)
    return torch.nn.functional.pad(values.long(), (0, count * block - n), value=pad).view(batch, count, block)


def _key_block_ranges(n_q, n_k, positions, window, segments, batch, device, block_q, block_k):
    """Per (batch, query block): the key blocks ``[lo, hi)`` any of its rows can see."""
    count = triton.cdiv(n_q, block_q)
    lo = torch.zeros(batch, count, dtype=torch.long, device=device)
    hi = torch.full((batch, count), n_k, dtype=torch.long, device=device)
    if positions is not None:
        hi = torch.minimum(hi, _blocks(positions, block_q, -1).amax(-1) + 1)
        if window:
            lo = torch.maximum(lo, _blocks(positions, block_q, _BIG).amin(-1) - window + 1)
    if segments is not None:
        first, last = _blocks(segments[0], block_q, _BIG).amin(-1), _blocks(segments[0], block_q, -_BIG).amax(-1)
        lo, hi = _narrow(lo, hi, segments[1], first, last)
    return _to_blocks(lo, hi, block_k)


def _query_block_ranges(n_q, n_k, positions, window, segments, batch, device, block_q, block_k):
    """Per (batch, key block): the query blocks ``[lo, hi)`` holding every row that can see one of its keys."""
    count = triton.cdiv(n_k, block_k)
    lo = torch.zeros(batch, count, dtype=torch.long, device=device)
    hi = torch.full((batch, count), n_q, dtype=torch.long, device=device)
    if positions is not None:  # rows see key j when position >= j (and position < j + window)
        first = torch.arange(count, device=device) * block_k
        last = (first + block_k).clamp(max=n_k) + window - 2 if window else torch.full_like(first, _BIG)
        lo, hi = _narrow(lo, hi, positions, first.expand(batch, count), last.expand(batch, count))
    if segments is not None:
        first, last = _blocks(segments[1], block_k, _BIG).amin(-1), _blocks(segments[1], block_k, -_BIG).amax(-1)
        lo, hi = _narrow(lo, hi, segments[0], first, last)
    return _to_blocks(lo, hi, block_q)


def _narrow(lo, hi, values, first, last):
    """``[lo, hi)`` narrowed to the elements of ``values [B, n]`` within ``[first, last]``: found by binary
    search, so only where ``values`` is sorted (positions and cu_seqlens segment ids are); elsewhere unchanged."""
    values = values.long().expand(lo.shape[0], -1).contiguous()
    ordered = (values[:, 1:] >= values[:, :-1]).all(-1, keepdim=True)
    start = torch.searchsorted(values, first.expand_as(lo).contiguous())
    stop = torch.searchsorted(values, last.expand_as(lo).contiguous(), right=True)
    return torch.where(ordered, torch.maximum(lo, start), lo), torch.where(ordered, torch.minimum(hi, stop), hi)


def _to_blocks(lo: torch.Tensor, hi: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Element ranges ``[lo, hi)`` as int32 block ranges; empty where ``hi <= lo``."""
    first = lo.clamp(min=0) // block
    last = torch.where(hi > lo, torch.div(hi + block - 1, block, rounding_mode="floor"), first)
    return first.int().contiguous(), torch.maximum(last, first).int().contiguous()
