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
128 x 128 = **8.39 MFLOP** on the tensor cores, 16,384 exponentials (+ one rescale a row and tile), and **64 KiB**
of keys and values read (the 32 KiB query tile once a program; the output once). At H200 rates (989 dense bf16
TFLOP/s, 4.8 TB/s) that is 8.5 ns of mma against 13.7 ns of DRAM, but only the first read of a key block comes
from DRAM: the ``Hq / Hkv = 7`` heads of a group and the other query tiles of a head read it again from the 50 MB
L2 (one KV head's keys and values are 16 MiB at 32K, and the programs running at once share a head: the grid's
first axis is the query tile). Compute-bound, like dense flash attention.

**The floor at 32K, density 0.15** (Qwen2.5-VL-7B's layer: B=1, Hq=28, Hkv=4, d=128, bf16; 256 x 256 blocks of
128, 32,896 causal blocks a head, 15% of them = 4,934 computed): 28 x 4,934 x 8.39 MFLOP = **1.16 TFLOP**. At the
measured dense ceiling (~642 TFLOP/s: causal SDPA at 16K, H32 d128) that is **1.81 ms**; dense causal SDPA over the
same layer is 28/32 x 14.75 ms = **12.9 ms**, so the floor is 7.1x, and the issue's bar (>= 5x: **2.58 ms**) asks
for **~450 TFLOP/s** on the computed blocks, 70% of the dense ceiling. Stock FlexAttention (H32, 32K) reached
1.72 / 3.64 / 6.56 ms at density 0.065 / 0.163 / 0.312: 334 / 395 / 420 TFLOP/s, which at 0.15 would be ~2.9 ms,
4.4x: the bar needs ~15% more than Flex's rate. DRAM is not the limit (the distinct keys and values are 67 MB:
14 us). What a sparse kernel loses against a dense one: the partial blocks' compares (the diagonal: 1 of the
~19 blocks a row lists on average at 0.15 and 32K), one 4-byte index load a key tile, and shorter loops (the
pipeline's ramp paid per query tile over ~19 blocks instead of ~129 on average).

**Default config, chosen for Hopper before measuring** (``DEFAULT_CONFIG``; the lead times the variants with
``python -m vlmzip.kernels.bench sparse --configs``): ``BLOCK_M=128, BLOCK_N=64, 8 warps, 3 stages`` — also what
torch's FlexAttention picks on an H100 for bf16, d = 128. 8 warps are two warpgroups, each issuing wgmma over 64 of
the 128 rows; a 128-row tile reads each key tile once for twice the rows a 64-row one does. The SASS that Triton
3.6 builds for ``GPUTarget("cuda", 90, 32)`` (``triton.compile`` of ``_forward`` on this CPU machine, read with the
wheel's ``cuobjdump``; bf16, d = 128, causal, blocks of 128), registers a thread / spill stores / shared memory:

===============  ======================  ===============  ======================  ======================
BLOCK_M/N        warps/stages            registers        spill stores (STL)      shared KiB
===============  ======================  ===============  ======================  ======================
128/64           8/3 (default)           182              0                       128
128/64           8/2, 8/4                185, 182         0, 0                    96, 160
128/128          8/2, 8/3                255, 255         0, 8                    160, 224
128/32           8/3                     137              0                       80
128/64           4/3                     255              53                      128
64/64            4/3, 4/4                191, 191         0, 0                    112, 144
64/128           4/2, 4/3                255, 255         12, 10                  144, 208
===============  ======================  ===============  ======================  ======================

The default holds the fp32 accumulator (128 x 128 / 256 threads = 64 registers), the logits (32) and the bf16
probabilities without a spill; its three stages of 16 KiB key and value tiles and the 32 KiB query tile fill 128
of the 227 KiB of shared memory, and at 182 registers x 256 threads one program runs an SM. Both loops compile
to wgmma with cp.async prefetching (the index load feeding the key and value addresses is pipelined too). 128 x
128 tiles save half the row-statistics updates but sit at the register cap (spilling at 3 stages); 4 warps on
128-row tiles spill. A persistent grid (programs that loop over tiles) was left out: at 32K a layer has 28 x 256 =
7,168 programs for 132 SMs, and the longest-first order already leaves a short tail. All query heads of a KV
group in one program would read each key tile once for the group, but only where the heads list the same blocks
(a broadcast mask); with per-head masks they do not, and L2 already serves the group's repeated reads. Triton 3.6's
automatic warp specialization (``tl.range(..., warp_specialize=True)`` on the full-block loop) does not compile
for sm_90 here (its ``make_ttgir`` pass fails on the indirectly addressed loads), so it is not a config option.

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
    """Launch parameters: query rows and keys per tile (each clipped to the mask's block; smaller tiles cut a
    block), warps and software-pipeline stages. The default is chosen for an H200 from the compiled kernel's
    registers and shared memory (module docstring), not yet timed."""

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
