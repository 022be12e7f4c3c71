"""Triton side of ``vlmzip.kernels.block_sparse_attention``: a FlashAttention-2 forward over listed key blocks.

Called only through ``block_sparse_attention.block_sparse_attention_triton``, which checks the arguments and turns
the dense block mask into per-row lists first (``block_lists``: for each (sample, mask head, query block) the key
blocks that need the element mask, then those that do not, and the two counts; a broadcast head dim stays 1).

``_forward``, one program per (query tile of ``BLOCK_M`` rows, sample x query head). The tile lies inside one
query block (``BLOCK_M`` divides ``block_q``), so it reads that block's lists: first the *partial* key blocks
(straddling the causal / ``key_end`` bound, ``key_start``, the window's edge or the sequence's end), each cut into
``block_k / BLOCK_N`` key tiles that apply the element mask ``lo[i] <= j <= hi[i]`` (``lo``: ``key_start`` and the
window, ``hi``: ``key_end`` or ``i``, clipped to ``S - 1``), then the *full* ones, whose tiles skip every compare.
Key blocks nothing in the query block can see are not listed at all. Each loop is flat (one iteration a key tile,
the block index loaded from the list), so Triton's software pipeliner prefetches the next tile's keys and values
through the indirect index. Online softmax in base 2 with fp32 row statistics and accumulator; grouped-query
attention by reading key head ``h // (Hq / Hkv)``; a row that sees no key returns zeros. Query tiles run last
first (``tile = n_tiles - 1 - program_id(0)``): under a causal mask the late rows hold the most blocks, and
starting them first leaves short programs to fill the tail.

**Work, counted** (d = 128, bf16, one computed 128x128 block of one head): ``QK^T`` and ``PV`` are 2 x 2 x 128 x
128 x 128 = **4.19 MFLOP** on the tensor cores, 16,384 exponentials (+ one rescale per row a tile), and **64 KiB**
of keys and values read (the query tile, 32 KiB, once a program; the output once). At H200 rates (989 dense bf16
TFLOP/s, 4.8 TB/s) that is 4.2 ns of mma against 13.7 ns of DRAM: only the first read of a key block comes from
DRAM; the ``Hq / Hkv = 7`` heads of a group and the query tiles of a head read it again from the 50 MB L2 (one KV
head's keys and values are 16 MiB at 32K, and consecutive programs share a head: the grid's first axis is the
query tile). Compute-bound, like dense flash attention.

**The floor at 32K, density 0.15** (Qwen2.5-VL-7B's layer: B=1, Hq=28, Hkv=4, d=128, bf16; 256 x 256 blocks of
128, 32,896 causal blocks a head, 15% of them = 4,934 computed): 28 x 4,934 x 4.19 MFLOP = **0.579 TFLOP**. At
the measured dense ceiling (~642 TFLOP/s: causal SDPA at 16K, H32 d128) that is **0.90 ms**; dense causal SDPA
over the same layer is 28/32 x 14.75 ms = **12.9 ms**, so the floor is 14.3x and the issue's bar (>= 5x) asks for
~2.6 ms, ~220 TFLOP/s achieved on the computed blocks. Stock FlexAttention reached 1.72 / 3.64 / 6.56 ms (H32) at
density 0.065 / 0.163 / 0.312: ~290 TFLOP/s (two thirds of the ~420-640 that dense kernels reach), the number to
beat. DRAM is not the limit: the distinct keys and values are 67 MB (14 us). Sparse kernels lose to dense ones
on the partial blocks (the diagonal's masked compares: 1 of ~6.6 listed blocks a row at this density), the list
loads (one 4-byte index a key tile) and the shorter loops (fewer iterations to hide the pipeline's ramp).

**Default config, chosen for Hopper before measuring** (``DEFAULT_CONFIG``; the lead times the variants):
``BLOCK_M=128, BLOCK_N=64, 8 warps, 3 stages``. 8 warps are two warpgroups, each issuing wgmma over 64 of the
128 rows; a 128-row tile reads each key tile once for twice the rows a 64-row tile does. ``BLOCK_N=64`` keeps the
fp32 logits (128 x 64 / 256 threads = 32 registers) and the bf16 probabilities beside the 64-register fp32
accumulator (128 x 128) under the 255-register cap without spills, where 128 x 128 tiles spill at d = 128 unless
Triton splits the warpgroups' work. 3 stages: a key tile and a value tile are 16 KiB each, so three of each and
the 32 KiB query tile take 128 KiB of the 227 KiB of shared memory: one program an SM, with the next two tiles in
flight during each step. A persistent grid (programs that loop over tiles) was left out: at 32K a layer has
28 x 256 = 7,168 programs for 132 SMs, and the longest-first order already leaves a short tail.

Deterministic (no atomics). Under Triton's interpreter, which multiplies bf16 tiles as raw integers, bf16 runs its
products in fp32; on a GPU 16-bit inputs multiply in their dtype with fp32 accumulation, softmax weights rounded to
it as flash attention does; fp32 inputs multiply in full fp32 (``ieee``: the tests' precision).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

# @triton.jit reads TRITON_INTERPRET when it decorates, i.e. when this module executes (Triton 3.6).
INTERPRETED = bool(triton.knobs.runtime.interpret)
_LOG2E = 1.4426950408889634


class Config(NamedTuple):
    """Launch parameters: query rows and keys per tile (each at most the mask's block; smaller tiles cut a block),
    warps and software-pipeline stages. The default is chosen for an H200 (module docstring), not yet timed."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3


DEFAULT_CONFIG = Config()


@triton.jit
def _step(
    q, k_base, v_base, k_ss, v_ss, kb, sub, lo, hi, length, m_i, l_i, acc, scale_log2,
    MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over key tile ``sub`` of key block ``kb``; with ``MASKED``, column ``j`` counts for
    row ``i`` only when ``lo[i] <= j <= hi[i]`` (``hi`` is below the sequence's end, so the padding of a short last
    block is masked too); without it the whole tile counts and nothing is compared."""
    cols = kb * BLOCK_K + sub * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    at_k = cols[:, None] * k_ss + dims[None, :]
    at_v = cols[:, None] * v_ss + dims[None, :]
    if MASKED or BLOCK_D != HEAD_DIM:
        # a masked tile may run past the sequence: those rows read as zeros and are masked below
        inside = (cols[:, None] < length) & (dims[None, :] < HEAD_DIM)
        k = tl.load(k_base + at_k, mask=inside, other=0.0)
        v = tl.load(v_base + at_v, mask=inside, other=0.0)
    else:
        k = tl.load(k_base + at_k)
        v = tl.load(v_base + at_v)
    if DOT_F32:
        k, v = k.to(tl.float32), v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    if MASKED:
        s = tl.where((cols[None, :] >= lo[:, None]) & (cols[None, :] <= hi[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # a row with nothing visible yet keeps max -inf; subtracting 0 instead avoids inf - inf
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:  # every logit is finite: the new maximum is too
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        shift = m_new
    p = tl.exp2(s - shift[:, None])
    alpha = tl.exp2(m_i - shift)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _forward(
    q_ptr, k_ptr, v_ptr, o_ptr, partial_ptr, total_ptr, index_ptr, start_ptr, end_ptr,
    q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, o_sb, o_sh, o_ss,
    c_sb, c_sh, i_sb, i_sh, i_sq, end_sb,
    length, heads, groups, scale_log2, window,
    HAS_START: tl.constexpr, HAS_END: tl.constexpr, WINDOW: tl.constexpr, MASK_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    tile = tl.num_programs(0) - 1 - tl.program_id(0)  # longest rows first
    # int64 (sample, head) index: offsets past 2**31 elements must not wrap
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // heads, bh % heads
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q_inside = (rows[:, None] < length) & (dims[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + b * q_sb + h * q_sh + rows[:, None] * q_ss + dims[None, :], mask=q_inside, other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    # the visible columns of each row: lo <= j <= hi (padding rows past the sequence see nothing)
    if HAS_END:
        hi = tl.load(end_ptr + b * end_sb + rows, mask=rows < length, other=-1)
        hi = tl.minimum(hi, length - 1)
    else:
        hi = tl.where(rows < length, rows, -1)
    lo = tl.zeros([BLOCK_M], tl.int32)
    if HAS_START:
        lo = lo + tl.load(start_ptr + b)
    if WINDOW:
        lo = tl.maximum(lo, rows - window + 1)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = k_ptr + b * k_sb + (h // groups) * k_sh
    v_base = v_ptr + b * v_sb + (h // groups) * v_sh
    mask_head = h if MASK_HEADS else 0
    row_block = tile * BLOCK_M // BLOCK_Q
    count_at = b * c_sb + mask_head * c_sh + row_block
    n_partial, n_total = tl.load(partial_ptr + count_at), tl.load(total_ptr + count_at)
    index_base = index_ptr + b * i_sb + mask_head * i_sh + row_block * i_sq
    SUB: tl.constexpr = BLOCK_K // BLOCK_N
    for it in range(0, n_partial * SUB):
        kb = tl.load(index_base + it // SUB)
        m_i, l_i, acc = _step(
            q, k_base, v_base, k_ss, v_ss, kb, it % SUB, lo, hi, length, m_i, l_i, acc, scale_log2,
            True, HEAD_DIM, DOT_F32, PRECISION, BLOCK_K, BLOCK_N, BLOCK_D,
        )  # fmt: skip
    for it in range(n_partial * SUB, n_total * SUB):
        kb = tl.load(index_base + it // SUB)
        m_i, l_i, acc = _step(
            q, k_base, v_base, k_ss, v_ss, kb, it % SUB, lo, hi, length, m_i, l_i, acc, scale_log2,
            False, HEAD_DIM, DOT_F32, PRECISION, BLOCK_K, BLOCK_N, BLOCK_D,
        )  # fmt: skip
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # a row that saw no key: zeros
    o_at = o_ptr + b * o_sb + h * o_sh + rows[:, None] * o_ss + dims[None, :]
    tl.store(o_at, out.to(o_ptr.dtype.element_ty), mask=q_inside)


def launch(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lists: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scale: float,
    block_q: int,
    block_k: int,
    key_start: torch.Tensor | None,
    key_end: torch.Tensor | None,
    window: int | None,
    config: Config = DEFAULT_CONFIG,
) -> torch.Tensor:
    """Run ``_forward`` on checked arguments and their ``(partial, total, indices)`` lists (``block_lists``)."""
    batch, heads, length, dim = query.shape
    query, key, value = (_unit_stride(t) for t in (query, key, value))
    partial, total, indices = lists
    out = torch.empty_like(query)
    block_m, block_n = min(config.block_m, block_q), min(config.block_n, block_k)
    unused = partial.new_zeros(1)
    start = unused if key_start is None else key_start.to(device=query.device, dtype=torch.int32)
    end = unused.view(1, 1) if key_end is None else key_end.to(device=query.device, dtype=torch.int32)
    end = end if end.stride(-1) == 1 else end.contiguous()
    dot_f32 = query.dtype == torch.float32 or (INTERPRETED and query.dtype == torch.bfloat16)
    grid = (triton.cdiv(length, block_m), batch * heads)
    _forward[grid](
        query, key, value, out, partial, total, indices, start, end,
        *query.stride()[:3], *key.stride()[:3], *value.stride()[:3], *out.stride()[:3],
        partial.stride(0), partial.stride(1), *indices.stride()[:3], end.stride(0),
        length, heads, heads // key.shape[1], float(scale) * _LOG2E, window or 0,
        HAS_START=key_start is not None, HAS_END=key_end is not None, WINDOW=window is not None,
        MASK_HEADS=partial.shape[1] > 1, HEAD_DIM=dim, DOT_F32=dot_f32, PRECISION="ieee" if dot_f32 else "tf32",
        BLOCK_Q=block_q, BLOCK_K=block_k, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(dim)), num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out


def _unit_stride(tensor: torch.Tensor) -> torch.Tensor:
    """The kernel steps the last dimension by 1 (a copy only for the rare tensor that does not)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()
