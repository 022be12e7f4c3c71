"""Block-sparse prefill attention: each query block attends only the key blocks listed for it.

The prompt pass's attention ``query [B, Hq, S, d]`` over ``key``/``value [B, Hkv, S, d]`` (grouped-query: ``Hq``
a multiple of ``Hkv``, query head ``h`` reads key head ``h // (Hq // Hkv)``), the sequence cut into query blocks
of ``block_q`` rows and key blocks of ``block_k`` columns (the last of each may be short). ``block_mask [B, Hq or
1, ceil(S / block_q), ceil(S / block_k)]`` (bool) lists the key blocks each query block computes; a key outside
them is skipped as if masked. Inside a listed block the element mask still holds:

* row ``i`` of sample ``b`` sees column ``j`` when ``key_start[b] <= j <= key_end[b, i]`` (``key_start [B]``: the
  first real column, left padding before it; default 0. ``key_end [B, S]``: the last column a row sees, default
  ``i``: causal; a larger value lets a row see later keys, as Gemma-3's image tokens see their whole image);
* and, with ``window``, ``j > i - window`` (a sliding-window layer).

Logits are ``query @ key * scale``; a row that sees no key returns zeros. Output ``[B, Hq, S, d]`` in the query's
dtype. Every block listed (the whole grid) is dense attention under the same element mask.

``block_sparse_attention_reference`` builds the element mask and runs a softmax in fp32, one head at a time (small
sizes: tests and the CPU). Two fused paths compute the same from per-row lists of the listed blocks (``block_lists``:
blocks no row of a query block can see dropped; the *partial* ones, which the element mask cuts, apart from the
*full* ones, which need no compare):

* ``block_sparse_attention_triton``: one Triton kernel (``_block_sparse_attention_triton``: FlashAttention-2 over
  the lists, its work and floor counted there; tile sizes, warps and stages in its ``Config``);
* ``block_sparse_attention_flex``: FlexAttention (``torch.nn.attention.flex_attention``, compiled on CUDA) over a
  ``BlockMask`` of the same lists (``flex_block_mask``) with a ``mask_mod`` for the element mask.

``block_sparse_attention`` runs either, or the reference, by ``backend`` (``"auto"``: ``choose_backend``, the one
place where the per-shape choice between the two fused paths goes once ``python -m vlmzip.kernels.bench sparse``
has timed them; for now the kernel on CUDA, the reference elsewhere).

**Work**: 4 x block_q x block_k x d FLOPs a computed block and head (8.39 MFLOP at 128 x 128, d = 128); dense causal
attention is the same over the n (n + 1) / 2 causal blocks, so at causal density ``rho`` a fused path can at best be
``1 / rho`` times faster. At 32K and density 0.15 on an H200 (Qwen2.5-VL-7B's layer) that floor is 1.81 ms against
SDPA's 12.9 ms (the kernel's docstring counts it).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import NamedTuple

import torch

from vlmzip.kernels.attention_mass import triton_available

__all__ = [
    "BACKENDS",
    "BlockLists",
    "block_grid",
    "block_lists",
    "block_sparse_attention",
    "block_sparse_attention_flex",
    "block_sparse_attention_reference",
    "block_sparse_attention_triton",
    "check_block_sparse",
    "choose_backend",
    "flex_attend",
    "flex_block_mask",
]

#: what ``block_sparse_attention``'s ``backend`` takes ("auto": ``choose_backend``'s pick)
BACKENDS = ("auto", "triton", "flex", "reference")


class BlockLists(NamedTuple):
    """A block mask as per-row lists (``block_lists``): for each (sample, mask head, query block), ``total`` listed
    key blocks in ``indices[..., :total]``, the first ``partial`` of them needing the element mask, the rest seen
    whole. ``partial``/``total`` ``[B, Hq or 1, nq]`` and ``indices [B, Hq or 1, nq, nk]``, int32; entries past
    ``total`` are unused. FlexAttention's ``kv_num_blocks``/``kv_indices`` (partial) and ``full_kv_*`` (the rest)."""

    partial: torch.Tensor
    total: torch.Tensor
    indices: torch.Tensor


def block_grid(length: int, block_q: int = 128, block_k: int = 128) -> tuple[int, int]:
    """The number of query blocks and key blocks of a ``length``-token prompt."""
    return -(-length // block_q), -(-length // block_k)


def check_block_sparse(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_mask: torch.Tensor,
    block_q: int,
    block_k: int,
    key_start: torch.Tensor | None,
    key_end: torch.Tensor | None,
    window: int | None,
) -> None:
    """Raise ``ValueError`` naming the first argument whose shape or value does not fit the others."""
    if query.dim() != 4 or key.shape != value.shape or key.dim() != 4:
        raise ValueError(f"query [B, Hq, S, d] and key/value [B, Hkv, S, d] expected, got {query.shape}, {key.shape}")
    batch, heads, length, _ = query.shape
    if key.shape[0] != batch or key.shape[2] != length or heads % key.shape[1]:
        raise ValueError(
            f"key {tuple(key.shape)} does not fit query {tuple(query.shape)} (Hq must be a multiple of Hkv)"
        )
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name}={size}: block sizes must be powers of two >= 16 (e.g. 64 or 128)")
    grid = block_grid(length, block_q, block_k)
    if block_mask.dtype != torch.bool or block_mask.dim() != 4 or block_mask.shape[0] != batch:
        raise ValueError(
            f"block_mask must be bool [B, Hq or 1, {grid[0]}, {grid[1]}], got {block_mask.dtype} "
            f"{tuple(block_mask.shape)}"
        )
    if block_mask.shape[1] not in (1, heads) or tuple(block_mask.shape[2:]) != grid:
        raise ValueError(
            f"block_mask {tuple(block_mask.shape)} does not fit {length} tokens in blocks of "
            f"{block_q}x{block_k}: expected [{batch}, {heads} or 1, {grid[0]}, {grid[1]}]"
        )
    if key_start is not None and tuple(key_start.shape) != (batch,):
        raise ValueError(f"key_start must be [B] = [{batch}], got {tuple(key_start.shape)}")
    if key_end is not None and tuple(key_end.shape) != (batch, length):
        raise ValueError(f"key_end must be [B, S] = [{batch}, {length}], got {tuple(key_end.shape)}")
    if window is not None and window < 1:
        raise ValueError(f"window={window}: a sliding window holds at least one key")


def element_mask(
    block_mask: torch.Tensor,
    length: int,
    block_q: int,
    block_k: int,
    key_start: torch.Tensor | None,
    key_end: torch.Tensor | None,
    window: int | None,
) -> torch.Tensor:
    """The ``[B, Hq or 1, S, S]`` bool mask the arguments stand for (the reference's; O(S^2) memory)."""
    device = block_mask.device
    rows = torch.arange(length, device=device)
    blocks = block_mask.repeat_interleave(block_q, dim=2)[:, :, :length]
    blocks = blocks.repeat_interleave(block_k, dim=3)[:, :, :, :length]
    end = rows.expand(block_mask.shape[0], length) if key_end is None else key_end.to(device)
    start = torch.zeros(block_mask.shape[0], dtype=torch.long, device=device) if key_start is None else key_start
    allowed = (rows[None, None, :] <= end[:, :, None]) & (rows[None, None, :] >= start.to(device)[:, None, None])
    if window is not None:
        allowed &= rows[None, None, :] > rows[None, :, None] - window
    return blocks & allowed[:, None]


def block_sparse_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    scale: float | None = None,
    block_q: int = 128,
    block_k: int = 128,
    key_start: torch.Tensor | None = None,
    key_end: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Softmax attention under the block and element masks, in fp32, one query head at a time."""
    check_block_sparse(query, key, value, block_mask, block_q, block_k, key_start, key_end, window)
    batch, heads, length, dim = query.shape
    scale = dim**-0.5 if scale is None else scale
    group = heads // key.shape[1]
    mask = element_mask(block_mask, length, block_q, block_k, key_start, key_end, window)
    out = torch.empty_like(query)
    for head in range(heads):
        q = query[:, head].float()
        k, v = key[:, head // group].float(), value[:, head // group].float()
        seen = mask[:, head if mask.shape[1] > 1 else 0]
        logits = (q @ k.transpose(-1, -2) * scale).masked_fill(~seen, float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row that sees nothing: zeros
        out[:, head] = (probs @ v).to(query.dtype)
    return out


def block_lists(
    block_mask: torch.Tensor,
    length: int,
    block_q: int = 128,
    block_k: int = 128,
    key_start: torch.Tensor | None = None,
    key_end: torch.Tensor | None = None,
    window: int | None = None,
) -> BlockLists:
    """The key blocks each query block computes, as lists (``BlockLists``), built once per call on the mask's device.

    A listed block that no row of its query block can see (above the causal / ``key_end`` bound, wholly before
    ``key_start`` or the window) is dropped, bounds taken over the block's rows; a kept block is *partial* when some
    element of it is masked (or it runs past the sequence's end), else *full*. Partial blocks come first, each
    group in column order. A few elementwise passes over ``[B, Hq or 1, nq, nk]`` and one scatter: part of a
    selection method's cost (``python -m vlmzip.kernels.bench sparse`` times it)."""
    batch, n_k = block_mask.shape[0], block_mask.shape[3]
    device = block_mask.device
    lo_min, lo_max, hi_min, hi_max = _row_bounds(batch, length, block_q, key_start, key_end, window, device)
    first = torch.arange(n_k, device=device) * block_k
    last = (first + block_k).clamp(max=length) - 1
    seen = (last >= lo_min[..., None]) & (first <= hi_max[..., None])  # [B, nq, nk]
    whole = (first >= lo_max[..., None]) & (last <= hi_min[..., None]) & (first + block_k <= length)
    keep = block_mask & seen[:, None]
    part = keep & ~whole[:, None]
    partial = part.sum(-1, dtype=torch.int32)
    total = keep.sum(-1, dtype=torch.int32)
    # each kept block's place in its row's list: partial ones first, then the full ones; dropped ones to a spare slot
    place = torch.where(part, part.cumsum(-1) - 1, partial[..., None] + (keep & ~part).cumsum(-1) - 1)
    place = torch.where(keep, place, n_k)
    columns = torch.arange(n_k, dtype=torch.int32, device=device).expand_as(place)
    indices = torch.zeros(*place.shape[:-1], n_k + 1, dtype=torch.int32, device=device)
    indices.scatter_(-1, place, columns)
    return BlockLists(partial, total, indices[..., :n_k])


def _row_bounds(
    batch: int,
    length: int,
    block_q: int,
    key_start: torch.Tensor | None,
    key_end: torch.Tensor | None,
    window: int | None,
    device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """Over the rows of each query block, ``[B, nq]`` each: the least and greatest first visible column (``lo``:
    ``key_start`` and the window) and the least and greatest last one (``hi``: ``key_end`` or the row, clipped to
    the sequence)."""
    n_q = -(-length // block_q)
    rows = torch.arange(n_q * block_q, device=device)
    real = rows < length
    if key_end is None:
        hi = rows.expand(batch, -1)
    else:
        hi = torch.nn.functional.pad(key_end.to(device, torch.long), (0, n_q * block_q - length))
    hi = hi.clamp(max=length - 1)
    lo = torch.zeros(batch, 1, dtype=torch.long, device=device) if key_start is None else key_start.to(device)[:, None]
    lo = lo.long().expand(batch, n_q * block_q)
    if window is not None:
        lo = torch.maximum(lo, rows - window + 1)
    big = 2 * length + 1  # padding rows: neutral in each minimum and maximum
    bounds = []
    for values, neutral in ((lo, big), (lo, -big), (hi, big), (hi, -big)):
        values = torch.where(real, values, neutral).view(batch, n_q, block_q)
        bounds.append(values.amin(-1) if neutral > 0 else values.amax(-1))
    return tuple(bounds)


def block_sparse_attention_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    scale: float | None = None,
    block_q: int = 128,
    block_k: int = 128,
    key_start: torch.Tensor | None = None,
    key_end: torch.Tensor | None = None,
    window: int | None = None,
    config: tuple | None = None,
) -> torch.Tensor:
    """The reference's result from one Triton kernel over the listed blocks (``_block_sparse_attention_triton``);
    ``config``: its ``Config`` (tile sizes, warps, stages; default ``DEFAULT_CONFIG``, chosen for Hopper)."""
    check_block_sparse(query, key, value, block_mask, block_q, block_k, key_start, key_end, window)
    _check_tensors(query, key, value)
    batch, heads, length, dim = query.shape
    if length == 0:
        return torch.empty_like(query)
    lists = block_lists(block_mask.to(query.device), length, block_q, block_k, key_start, key_end, window)
    module = _triton_module()
    config = module.DEFAULT_CONFIG if config is None else module.Config(*config)
    for name, size, block in (("block_m", config.block_m, block_q), ("block_n", config.block_n, block_k)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"config {name}={size}: tile sizes must be powers of two >= 16 (at most {block} used)")
    scale = dim**-0.5 if scale is None else scale
    return module.launch(query, key, value, lists, scale, block_q, block_k, key_start, key_end, window, config)


def block_sparse_attention_flex(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    scale: float | None = None,
    block_q: int = 128,
    block_k: int = 128,
    key_start: torch.Tensor | None = None,
    key_end: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """The reference's result from FlexAttention over ``flex_block_mask``'s ``BlockMask``, compiled on CUDA (off
    CUDA Flex runs unfused: slow, for tests)."""
    check_block_sparse(query, key, value, block_mask, block_q, block_k, key_start, key_end, window)
    _check_tensors(query, key, value)
    if query.shape[2] == 0:
        return torch.empty_like(query)
    blocks = flex_block_mask(
        query, block_mask, block_q=block_q, block_k=block_k, key_start=key_start, key_end=key_end, window=window
    )
    return flex_attend(query, key, value, blocks, scale)


def flex_block_mask(
    query: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    block_q: int = 128,
    block_k: int = 128,
    key_start: torch.Tensor | None = None,
    key_end: torch.Tensor | None = None,
    window: int | None = None,
):
    """FlexAttention's ``BlockMask`` for checked arguments: built from ``block_lists`` (its partial blocks are
    Flex's ``kv_indices``, the full ones ``full_kv_indices``) with a ``mask_mod`` for the element mask. Off CUDA
    Flex runs unfused and evaluates only the ``mask_mod``, on every element, ignoring the lists, so there the
    ``mask_mod`` also looks up the block mask."""
    from torch.nn.attention.flex_attention import BlockMask

    length = query.shape[2]
    block_mask = block_mask.to(query.device)
    lists = block_lists(block_mask, length, block_q, block_k, key_start, key_end, window)
    n_k = lists.indices.shape[-1]
    after = lists.partial[..., None] + torch.arange(n_k, device=query.device)
    full_indices = lists.indices.gather(-1, after.clamp(max=n_k - 1))
    looked_up = None if query.is_cuda else block_mask
    mask_mod = _flex_mask_mod(query, length, block_q, block_k, key_start, key_end, window, looked_up)
    return BlockMask.from_kv_blocks(
        lists.partial, lists.indices, lists.total - lists.partial, full_indices, BLOCK_SIZE=(block_q, block_k),
        mask_mod=mask_mod, seq_lengths=(length, length), compute_q_blocks=False,
    )  # fmt: skip


def flex_attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, blocks, scale: float | None):
    """FlexAttention over ``blocks`` (``flex_block_mask``): compiled on CUDA, unfused elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    attend = _compiled_flex() if query.is_cuda else flex_attention
    return attend(query, key, value, block_mask=blocks, scale=scale, enable_gqa=query.shape[1] != key.shape[1])


def _flex_mask_mod(query, length, block_q, block_k, key_start, key_end, window, block_mask):
    """Flex's ``mask_mod(b, h, q_idx, kv_idx)``: the element mask (module docstring), and the block mask itself
    when given. Rows are padded to a multiple of 128 (Flex's tile) with rows that see nothing, so that a padding
    row's lookup stays in bounds."""
    batch, device = query.shape[0], query.device
    padded = -(-length // max(block_q, 128)) * max(block_q, 128)
    ends = torch.arange(length, device=device).expand(batch, -1) if key_end is None else key_end.to(device)
    ends = torch.nn.functional.pad(ends.long().clamp(max=length - 1), (0, padded - length), value=-1)
    starts = torch.zeros(batch, dtype=torch.long, device=device) if key_start is None else key_start.to(device)
    per_head = block_mask is not None and block_mask.shape[1] > 1

    def mask_mod(b, h, q_idx, kv_idx):
        visible = (kv_idx <= ends[b, q_idx]) & (kv_idx >= starts[b])
        if window is not None:
            visible = visible & (kv_idx > q_idx - window)
        if block_mask is not None:
            visible = visible & block_mask[b, h if per_head else 0, q_idx // block_q, kv_idx // block_k]
        return visible

    return mask_mod


@cache
def _compiled_flex():
    """FlexAttention compiled once a process (its fused kernel exists only under ``torch.compile``)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _triton_module():
    # imported on first use: the reference must work where Triton is not installed
    return importlib.import_module("vlmzip.kernels._block_sparse_attention_triton")


def _check_tensors(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    """The kernels' extra conditions: one float dtype and one device for the three tensors."""
    if query.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"query must be bf16, fp16 or fp32 for the kernels, got {query.dtype}")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f"key and value must have the query's dtype {query.dtype}, got {key.dtype}, {value.dtype}")
    if key.device != query.device or value.device != query.device:
        raise ValueError(f"query, key and value must be on one device, got {query.device}, {key.device}, "
                         f"{value.device}")  # fmt: skip


def choose_backend(query: torch.Tensor, block_mask: torch.Tensor, block_q: int = 128, block_k: int = 128) -> str:
    """The backend ``backend="auto"`` runs for these inputs: the reference off CUDA (or without Triton), the Triton
    kernel on CUDA, at every shape. Measured on one H200 (torch 2.11, docs/performance.md): the kernel matched the
    reference under padding, spans and windows (max |diff| <= 1.6e-2 in bf16) where the Flex path did not (1.2 to
    3.1 on a 1,000-token prompt, dense mask included: its block mask mishandles a length that is not a multiple of
    the block), and Flex's run at 32K ended in a CUDA error. Flex was 1.2x faster than the kernel at 8K, density
    0.06, where it was right. Until the Flex path is fixed and timed at every length, it is opt-in
    (``backend="flex"``) and never chosen here."""
    if not query.is_cuda or not triton_available():
        return "reference"
    return "triton"


def block_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    scale: float | None = None,
    block_q: int = 128,
    block_k: int = 128,
    key_start: torch.Tensor | None = None,
    key_end: torch.Tensor | None = None,
    window: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Block-sparse attention (the module docstring has the contract) through ``backend``: ``"triton"``,
    ``"flex"``, ``"reference"`` or ``"auto"`` (``choose_backend``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        backend = choose_backend(query, block_mask, block_q, block_k)
    function = {
        "triton": block_sparse_attention_triton,
        "flex": block_sparse_attention_flex,
        "reference": block_sparse_attention_reference,
    }[backend]
    return function(
        query,
        key,
        value,
        block_mask,
        scale=scale,
        block_q=block_q,
        block_k=block_k,
        key_start=key_start,
        key_end=key_end,
        window=window,
    )
