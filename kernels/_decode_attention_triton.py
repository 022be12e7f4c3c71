"""Triton side of ``vlmzip.kernels.decode_attention``: split-context decode attention over a packed cache.

Called only through ``decode_attention.decode_attention_triton``, which checks the arguments first.

1. ``_split``, one program per (chunk, sample x KV head). Chunks cut each segment into ``split_size`` keys: the
   first ``ceil(S_packed / split_size)`` are packed, the rest full precision, so one launch covers both segments
   and a program reads one kind of tile. The program holds the ``Hq / Hkv * q`` query rows of its KV head as one
   tile (each key tile is read once for the whole group), builds ``[BLOCK_N, d]`` key and value tiles (packed ones
   unpacked and dequantised in registers, below), and runs an online softmax over them. It writes the chunk's
   normalised output and log-sum-exp (base 2), ``-inf`` when it saw no valid key.
2. ``_combine``, one program per query row: ``out = sum_c 2**(lse_c - lse) * out_c`` over the chunks, with
   ``lse = log2 sum_c 2**lse_c``; zeros for a row that saw no key at all. It also writes the row's ``lse`` (natural
   log, ``-inf`` for a row without keys) for callers that join segments (``decode_attention.merge_attention``).

**A packed tile** (``_dequantized``). The payload is read as a plain 2D tile of words (4 bytes, or 2 or 1 where
a row, stride or offset does not allow 4: ``_packed_args``), each byte once: ``[BLOCK_N / PER, d / 4]`` words for
a tensor packed along tokens (``PER = 8 / bits`` tokens a byte: keys), ``[BLOCK_N, d / (4 PER)]`` for one packed
along channels (values). Codes become floats without a conversion instruction (``_codes``): with bytes 0 and 2 of a
word in the two 16-bit halves of one uint32 (bytes 1 and 3 of ``word >> 8`` in another), one shift and one and-or
per field put two codes into the mantissas of two 16-bit floats ``MAGIC + code`` (``magic``, a register argument,
holds ``MAGIC``'s bits twice: 128 in bf16 holds codes of up to 7 bits, 1024 in fp16 up to 10), and one packed
subtraction gives the codes exactly; one packed fma applies the scale and zero point. Nothing is reordered: the
halves stay paired, so

* within a word, channels come in the order in which the halves receive them (``_channel``: bytes 0, 2, 1, 3, and
  for values each field's channels together); the query is loaded in the keys' channel order and the partial
  output is stored from the values' (once a program), and the scales of a tile are permuted with it;
* a tile's tokens come in field-major order when the keys pack them (``_tokens``): row ``j * BLOCK_N / PER + r``
  is token ``r * PER + j`` (field ``j`` of byte row ``r``), and the values and the validity mask are read in that
  order (a row gather: whole rows of value words). Softmax attention does not depend on the order of its keys.

Scales and zero points are read at their own granularity: a row per byte row of keys (``[BLOCK_N / PER, d]``,
contiguous), one per word of values when a group holds whole words (else one per byte), and broadcast in
registers. Only packed programs permute the query's and the output's channels.

**Work, counted** on the SASS that Triton 3.6 builds for an H200, without one: ``triton.compile`` of ``_split``
(an ``ASTSource`` with the signature, constexprs and 16-byte divisibility a launch specialises) for
``GPUTarget("cuda", 90, 32)``, read with the wheel's ``cuobjdump -sass``; the bench layer (Hq=28, Hkv=4, d=128,
bf16, 2-bit keys and values, groups of 32, 16,256 packed tokens); instructions in the packed loop's body per
thread, divided by the key and value elements a thread handles an iteration:

==============================  =====================  ================  ===================  ================
per K or V element              before (64/4/2)        before (32/4/1)   after (64/4/1)       after (32/4/1)
==============================  =====================  ================  ===================  ================
all SASS instructions           17.0                   18.5              6.5                  7.7
int unpack (shift/mask/perm)    5.4                    5.6               2.2                  2.6
int<->float conversions         1.5                    1.5               0.02                 0.02
fp32 fma / 16-bit fma+sub       1.0 / 0                1.0 / 0           0.01 / 1.0           0.02 / 1.0
global load instructions        1.4                    1.7               0.13                 0.14
shared-memory instructions      1.4                    1.5               1.0                  0.95
address and other integer ops   4.0                    4.4               0.6                  1.0
registers / CTAs an SM holds    212 / 2                205 / 2           255 / 2              128 / 4
==============================  =====================  ================  ===================  ================

(64/4/2: ``Config(block_n=64, num_warps=4, num_stages=2)``.) Per token and KV head that is 136 warp-instructions
before and 52 after (64/4/1; 62 at 32/4/1, 51 at 128/8/1): 2.6x fewer, and the per-element byte, scale and zero
gathers (each byte loaded 4 times) are gone: 0.13 global-load instructions an element instead of 1.4. About half of
what remains is the attention itself (the full-precision window's loop costs 23 warp-instructions a token) and
Triton's shared-memory staging of the dot operands. Query tiles pad to 8 rows, not 16 (``_MIN_ROWS``; the bench
layer has 7 rows a KV head). Folding the key scales into the query instead (``q . (code * scale + zero) =
(q * scale) . code + q . zero`` a key group) was counted and left out: the query tile is an operand of every warp's
mma, so each warp rescales all of it every tile, which costs what the fold saves (533 against 524 instructions at
32/4/1) and ~80 registers (its fp32 copy).

**Prediction** for the bench shapes (one step from CUDA graphs), from the counts above: the old kernel issued
~1.0-1.3 warp-instructions per SM and cycle (8.8M of them at B=1 in 26-33 us, 1.98 GHz); at that rate the new one
takes B=1 (16K context): ~10-13 us of split kernel + ~2 us of combine, **12-15 us** (before 28.7-35.7; its 6.5 MB
floor is 1.4 us: still instruction-bound); B=8: **80-105 us** (before 179-291; SDPA 68.7); B=32, S=1000: **20-24
us** (before 55; SDPA 20). With ten times fewer long-latency loads the rate should rise; at 2 per SM and cycle:
~8.5, ~53 and ~14 us (3-4x). Registers: 255 at 64/4/1 (2 programs an SM), 128 at 32/4/1 and 64/8/1 (4): a
split size giving more programs than 2 an SM suits those.

Deterministic (no atomics). Under Triton's interpreter, which multiplies bf16 tiles as raw integers and has no bf16
arithmetic, bf16 runs its products and its dequantisation in fp32 (the codes still built as bf16 magic floats);
on a GPU, 16-bit queries multiply 16-bit tiles dequantised in 16-bit arithmetic (``zero + code * scale`` with one
rounding, as the query's dtype; 8-bit codes with bf16 in fp32: 128 + code does not fit bf16), softmax weights
rounded to it too, as flash attention does, with fp32 accumulation; fp32 queries run everything in fp32.
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
#: fewest query rows a program's tile holds (an mma takes 8 or more; 16 pads the bench's 7 rows twice as much)
_MIN_ROWS = 8


class Config(NamedTuple):
    """Launch parameters of the split kernel: keys per tile, warps and software-pipeline stages. Default: the best
    over the three bench shapes timed from CUDA graphs on one H200 (B=1 and 8 at 16K, B=32 at 1K; 24 configs):
    19.8 / 127 / 34.5 us, where 64/4/1 (the fewest instructions counted) took 19.2 / 213 / 43.1 us."""

    block_n: int = 32
    num_warps: int = 4
    num_stages: int = 2


DEFAULT_CONFIG = Config()


@triton.jit
def _half(pairs, HIGH: tl.constexpr, CODES: tl.constexpr):
    """The low or high 16 bits of each uint32 of ``pairs``, as a ``CODES`` (bf16 or fp16) tensor."""
    if HIGH:
        pairs = pairs >> 16
    return (pairs & 0xFFFF).to(tl.uint16).to(CODES, bitcast=True)


@triton.jit
def _channel(x, ALONG_TOKENS: tl.constexpr, PER: tl.constexpr, LANES: tl.constexpr):
    """The channel that column ``x`` of a packed tile holds: a word's channels in the order ``_codes`` unpacks them
    (packed along channels, a field's channels first), its bytes in the order 0, 2, 1, 3 for 4-byte words."""
    byte = x % LANES
    if LANES == 4:
        byte = byte // 2 + (byte % 2) * 2
    if ALONG_TOKENS:
        channel = (x // LANES) * LANES + byte
    else:
        channel = ((x // (LANES * PER)) * LANES + byte) * PER + (x // LANES) % PER
    return channel


@triton.jit
def _fields(words, magic, SHIFT: tl.constexpr, BITS: tl.constexpr):
    """``[A, B, 8 // BITS]`` uint32: field ``j`` of the bytes at bits ``SHIFT`` and ``SHIFT + 16`` of each word,
    moved to bits 0 and 16 and or-ed into ``magic`` (one shift and one and-or an element: a pair of codes)."""
    MASK: tl.constexpr = ((1 << BITS) - 1) * 0x10001
    if BITS == 8:
        fields = tl.expand_dims(((words >> SHIFT) & MASK) | magic, 2)
    elif BITS == 4:
        fields = tl.join(((words >> SHIFT) & MASK) | magic, ((words >> (SHIFT + 4)) & MASK) | magic)
    else:
        low = tl.join(((words >> SHIFT) & MASK) | magic, ((words >> (SHIFT + 4)) & MASK) | magic)
        high = tl.join(((words >> (SHIFT + 2)) & MASK) | magic, ((words >> (SHIFT + 6)) & MASK) | magic)
        # join(low, high)[..., a, b] is field 2a + b
        fields = tl.reshape(tl.join(low, high), (words.shape[0], words.shape[1], 4))
    return fields


@triton.jit
def _codes(words, magic, BITS: tl.constexpr, LANES: tl.constexpr, CODES: tl.constexpr, MATH32: tl.constexpr):
    """``[A, B, 8 // BITS, LANES]``: the code of field ``j`` of byte ``i`` (``_channel``'s order) of each word at
    ``[:, :, j, i]``, a float of ``CODES`` or of fp32 (``MATH32``).

    A code or-ed into the low mantissa bits of the 16-bit float ``MAGIC`` makes the float ``MAGIC + code`` (exact:
    128 in bf16 holds 7 bits, 1024 in fp16 10); subtracting ``MAGIC`` leaves the code. With 4-byte words, bytes 0
    and 2 sit in the two halves of one uint32 and bytes 1 and 3 in those of another, so each and-or and each
    packed subtraction handles two codes; joining the halves last keeps each pair in its register."""
    PER: tl.constexpr = 8 // BITS
    MAGIC: tl.constexpr = 128.0 if CODES.is_bf16() else 1024.0
    if LANES == 4:
        words = words.to(tl.uint32, bitcast=True)
        pairs = tl.join(_fields(words, magic, 0, BITS), _fields(words, magic, 8, BITS))  # [A, B, field, parity]
        x = tl.join(_half(pairs, False, CODES), _half(pairs, True, CODES))  # [A, B, field, parity, half]
        x = tl.reshape(x, (words.shape[0], words.shape[1], PER, 4))  # byte parity + 2 * half: 0, 2, 1, 3
    elif LANES == 2:
        words = words.to(tl.uint16, bitcast=True).to(tl.uint32)
        x = tl.join(_half(_fields(words, magic, 0, BITS), False, CODES),
                    _half(_fields(words, magic, 8, BITS), False, CODES))  # fmt: skip
    else:
        x = tl.expand_dims(_half(_fields(words.to(tl.uint32), magic, 0, BITS), False, CODES), 3)
    if MATH32:
        x = x.to(tl.float32)
    return x - MAGIC


@triton.jit
def _in_word_order(tile, LANES: tl.constexpr):
    """``[A, B * LANES]`` scales (of channels or of bytes), in order, as ``[A, B, 1, LANES]`` in ``_channel``'s
    order."""
    shape: tl.constexpr = (tile.shape[0], tile.shape[1] // LANES, 1, LANES)
    if LANES == 4:  # [A, B, half, parity] -> [A, B, parity, half]
        tile = tl.permute(tl.reshape(tile, (shape[0], shape[1], 2, 2)), (0, 1, 3, 2))
    return tl.reshape(tile, shape)


@triton.jit
def _dequantized(
    payload_ptr, scale_ptr, zero_ptr, p_st, s_st, s_sd, magic, first, n_tokens, head_dim,
    BITS: tl.constexpr, GROUP: tl.constexpr, ALONG_TOKENS: tl.constexpr, LANES: tl.constexpr,
    CODES: tl.constexpr, MATH32: tl.constexpr, SUB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """``zero + code * scale`` (fp32 for ``MATH32``, else ``CODES``) of the tokens ``first + [0, BLOCK_N)`` of a
    packed ``[S, d]`` whose payload is read as words of ``LANES`` bytes (``payload_ptr`` and the token stride
    ``p_st`` count words): a ``[BLOCK_N, BLOCK_D]`` tile, tokens in ``_tokens``' order and channels in
    ``_channel``'s, zero past ``n_tokens`` and ``head_dim``. ``first`` is a multiple of ``BLOCK_N``."""
    PER: tl.constexpr = 8 // BITS
    if ALONG_TOKENS:  # word [r, w]: channels w * LANES + i of tokens r * PER + j; a scale per GROUP tokens
        rows = first // PER + tl.arange(0, BLOCK_N // PER)
        cols = tl.arange(0, BLOCK_D // LANES)
        inside = (rows < n_tokens // PER)[:, None] & (cols < head_dim // LANES)[None, :]
        words = tl.load(payload_ptr + rows[:, None] * p_st + cols[None, :], mask=inside, other=0)
    else:  # word [t, w]: channels (w * LANES + i) * PER + j of token t; a scale per GROUP channels
        rows = _tokens(first, SUB, BLOCK_N)
        cols = tl.arange(0, BLOCK_D // (PER * LANES))
        inside = (rows < n_tokens)[:, None] & (cols < head_dim // (PER * LANES))[None, :]
        words = tl.load(payload_ptr + rows[:, None] * p_st + cols[None, :], mask=inside, other=0)
    tile = _codes(words, magic, BITS, LANES, CODES, MATH32)  # [rows, words, fields, bytes]
    if ALONG_TOKENS:  # a scale per byte row and channel, rows read contiguously
        dims = tl.arange(0, BLOCK_D)
        inside = (rows < n_tokens // PER)[:, None] & (dims < head_dim)[None, :]
        at = (rows // (GROUP // PER))[:, None] * s_st + dims[None, :] * s_sd
        scale = _in_word_order(tl.load(scale_ptr + at, mask=inside, other=0.0), LANES)
        zero = _in_word_order(tl.load(zero_ptr + at, mask=inside, other=0.0), LANES)
    elif GROUP % (PER * LANES) == 0:  # a group holds whole words: a scale per word
        at = rows[:, None] * s_st + (cols // (GROUP // (PER * LANES)))[None, :] * s_sd
        shape: tl.constexpr = (BLOCK_N, BLOCK_D // (PER * LANES), 1, 1)
        scale = tl.reshape(tl.load(scale_ptr + at, mask=inside, other=0.0), shape)
        zero = tl.reshape(tl.load(zero_ptr + at, mask=inside, other=0.0), shape)
    else:  # a scale per byte
        dims = tl.arange(0, BLOCK_D // PER)
        inside = (rows < n_tokens)[:, None] & (dims < head_dim // PER)[None, :]
        at = rows[:, None] * s_st + (dims // (GROUP // PER))[None, :] * s_sd
        scale = _in_word_order(tl.load(scale_ptr + at, mask=inside, other=0.0), LANES)
        zero = _in_word_order(tl.load(zero_ptr + at, mask=inside, other=0.0), LANES)
    if MATH32:
        tile = tile * scale.to(tl.float32) + zero.to(tl.float32)
    else:  # one packed fma a pair
        tile = tile * scale + zero
    if ALONG_TOKENS and SUB == PER:  # [fields, byte rows, channels]: the tile's order as unpacked
        tile = tl.permute(tile, (2, 0, 1, 3))
    elif ALONG_TOKENS:  # [byte rows, fields, channels]: tokens in order (a tile of SUB = 1)
        tile = tl.permute(tile, (0, 2, 1, 3))
    return tl.reshape(tile, (BLOCK_N, BLOCK_D))


@triton.jit
def _tokens(first, SUB: tl.constexpr, BLOCK_N: tl.constexpr):
    """The tokens of a packed tile, in its order: row ``j * BLOCK_N / SUB + r`` is token ``first + r * SUB + j``
    (field ``j`` of byte row ``r`` of a tensor packing ``SUB`` tokens a byte; ``SUB = 1``: in order)."""
    at = tl.arange(0, BLOCK_N)
    return first + (at % (BLOCK_N // SUB)) * SUB + at // (BLOCK_N // SUB)


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
    kp_ptr, ks_ptr, kz_ptr, kp_sb, kp_sh, kp_st, ks_sb, ks_sh, ks_st, ks_sd,
    vp_ptr, vs_ptr, vz_ptr, vp_sb, vp_sh, vp_st, vs_sb, vs_sh, vs_st, vs_sd,
    fk_ptr, fk_sb, fk_sh, fk_st, fv_ptr, fv_sb, fv_sh, fv_st,
    pvalid_ptr, pvalid_sb, fvalid_ptr, fvalid_sb,
    n_packed, n_full, packed_splits, n_splits, kv_heads, n_rows, head_dim, scale_log2, split_size,
    k_magic, v_magic,
    K_BITS: tl.constexpr, K_GROUP: tl.constexpr, K_TOKENS: tl.constexpr, K_LANES: tl.constexpr,
    K_CODES: tl.constexpr, K_MATH32: tl.constexpr,
    V_BITS: tl.constexpr, V_GROUP: tl.constexpr, V_TOKENS: tl.constexpr, V_LANES: tl.constexpr,
    V_CODES: tl.constexpr, V_MATH32: tl.constexpr, SUB: tl.constexpr,
    PACKED_VALID: tl.constexpr, FULL_VALID: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # int64 (sample, KV head) index: offsets past 2**31 elements must not wrap
    split, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    b, h = bh // kv_heads, bh % kv_heads
    rows, dims = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    packed = split < packed_splits
    # a packed tile's columns hold channels in their words' order (_channel): a packed program loads the query in
    # the keys' order and stores its output from the values'
    q_dims = tl.where(packed, _channel(dims, K_TOKENS, 8 // K_BITS, K_LANES), dims)
    out_dims = tl.where(packed, _channel(dims, V_TOKENS, 8 // V_BITS, V_LANES), dims)
    # the query is contiguous [B, Hq, q, d]: the Hq / Hkv * q rows of KV head h are consecutive
    q_at = (bh * n_rows + rows)[:, None] * head_dim + q_dims[None, :]
    q = tl.load(q_ptr + q_at, mask=(rows[:, None] < n_rows) & (q_dims[None, :] < head_dim), other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if packed:
        start = split * split_size
        stop = tl.minimum(start + split_size, n_packed)
        kp_base, vp_base = kp_ptr + b * kp_sb + h * kp_sh, vp_ptr + b * vp_sb + h * vp_sh
        ks_base, kz_base = ks_ptr + b * ks_sb + h * ks_sh, kz_ptr + b * ks_sb + h * ks_sh
        vs_base, vz_base = vs_ptr + b * vs_sb + h * vs_sh, vz_ptr + b * vs_sb + h * vs_sh
        # tiles aligned to BLOCK_N (a tile's bytes and scales start a byte row and a group): a chunk that starts or
        # stops inside a tile masks the rest
        for first in range(start - start % BLOCK_N, stop, BLOCK_N):
            tokens = _tokens(first, SUB, BLOCK_N)
            live = (tokens >= start) & (tokens < stop)
            k = _dequantized(
                kp_base, ks_base, kz_base, kp_st, ks_st, ks_sd, k_magic, first, n_packed, head_dim,
                K_BITS, K_GROUP, K_TOKENS, K_LANES, K_CODES, K_MATH32, SUB, BLOCK_N, BLOCK_D,
            )  # fmt: skip
            v = _dequantized(
                vp_base, vs_base, vz_base, vp_st, vs_st, vs_sd, v_magic, first, n_packed, head_dim,
                V_BITS, V_GROUP, V_TOKENS, V_LANES, V_CODES, V_MATH32, SUB, BLOCK_N, BLOCK_D,
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
    tl.store(part_ptr + at[:, None] * head_dim + out_dims[None, :], out,
             mask=(rows[:, None] < n_rows) & (out_dims[None, :] < head_dim))  # fmt: skip


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
    block_n = min(config.block_n, max(16, triton.next_power_of_2(split)))
    key_args, key_flags = _packed_args(packed_key, "K")
    value_args, value_flags = _packed_args(packed_value, "V")
    _split[(n_splits, batch * kv_heads)](
        query, part, lse, *key_args, *value_args,
        full_key, *full_key.stride()[:3], full_value, *full_value.stride()[:3],
        *_mask_args(packed_valid, unused), *_mask_args(full_valid, unused),
        n_packed, n_full, packed_splits, n_splits, kv_heads, n_rows, dim, float(scaling) * _LOG2E, split,
        _magic(key_flags["K_CODES"]), _magic(value_flags["V_CODES"]), **key_flags, **value_flags,
        SUB=_order(packed_key, packed_value),
        PACKED_VALID=packed_valid is not None, FULL_VALID=full_valid is not None,
        DOT_F32=dot_f32, PRECISION="ieee" if dot_f32 else "tf32",
        BLOCK_M=max(_MIN_ROWS, triton.next_power_of_2(n_rows)), BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(dim)), num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    out = torch.empty_like(query)
    row_lse = torch.empty(batch, heads, n_q, dtype=torch.float32, device=query.device)
    block_s = min(64, triton.next_power_of_2(n_splits))
    _combine[(batch * heads * n_q,)](part, lse, out, row_lse, n_splits, dim, BLOCK_S=block_s,
                                     BLOCK_D=triton.next_power_of_2(dim))  # fmt: skip
    return out, row_lse


def _packed_args(packed: PackedKV, name: str) -> tuple[tuple, dict]:
    """Pointers and (sample, head, token) strides of a packed ``[B, H, S, d]``'s payload, seen as words of the most
    bytes (4, 2 or 1) that its rows, strides and offset allow, and scales (with the channel stride; the zero points
    share the scales' strides: a copy only for a pair that does not); and the ``name``-prefixed constexprs."""
    payload, scale, zero = packed.payload, packed.scale, packed.zero
    if payload.stride(-1) != 1:
        payload = payload.contiguous()
    if scale.stride() != zero.stride():
        scale, zero = scale.contiguous(), zero.contiguous()
    lanes = next(n for n in (4, 2, 1) if payload.shape[-1] % n == 0 and payload.storage_offset() % n == 0
                 and all(stride % n == 0 for stride in payload.stride()[:-1]))  # fmt: skip
    words = payload.view({4: torch.int32, 2: torch.int16, 1: torch.uint8}[lanes])
    bf16_codes = packed.dtype == torch.bfloat16 and packed.bits < 8  # 128 + code is exact up to 7 bits in bf16
    math32 = packed.dtype == torch.float32 or (packed.dtype == torch.bfloat16 and (INTERPRETED or not bf16_codes))
    flags = {"BITS": packed.bits, "GROUP": packed.group_size, "TOKENS": packed.group_along == "tokens",
             "LANES": lanes, "CODES": tl.bfloat16 if bf16_codes else tl.float16, "MATH32": math32}  # fmt: skip
    args = (words, scale, zero, *words.stride()[:3], *scale.stride())
    return args, {f"{name}_{key}": value for key, value in flags.items()}


def _magic(codes: tl.dtype) -> int:
    """The bits of ``_codes``' ``MAGIC`` (128 in bf16, 1024 in fp16) in both halves of a uint32: passed as an
    argument, it sits in a register, which lets one and-or instruction (a LOP3 of one immediate) mask a pair of
    codes into it; as a constant it takes two."""
    return 0x43004300 if codes == tl.bfloat16 else 0x64006400


def _order(*packed: PackedKV) -> int:
    """``_tokens``' ``SUB``: a packed tile's tokens come field by field of the tensors packed along tokens when they
    pack as many tokens a byte (their codes need no shuffle), else in order."""
    per = {8 // p.bits for p in packed if p.group_along == "tokens"}
    return per.pop() if len(per) == 1 else 1


def _mask_args(mask: torch.Tensor | None, unused: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A ``[B, S]`` bool mask as (uint8 pointer, batch stride); a placeholder when absent."""
    if mask is None:
        return unused, 0
    mask = _unit_stride(mask).view(torch.uint8)
    return mask, mask.stride(0)


def _unit_stride(tensor: torch.Tensor) -> torch.Tensor:
    """The kernels step the last dimension by 1 (a copy only for the rare tensor that does not)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()
