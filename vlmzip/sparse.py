"""Block-sparse prefill: the pure helpers the sparse-attention methods share (``vlmzip.stages.sparse``).

**Layout.** A prompt-pass layer's attention is computed *rows first*: each sample's ``n_b`` real rows at ``0 ..
n_b - 1``, its left padding moved behind them. The block grid then starts at every sample's first token, so a sample
gets the same blocks, and the same attention, in any batch as alone. ``Layout`` holds what the layer's mask says in
that order: ``mask_layout`` reads it from the mask the model passed (``None``: plain causal; a 2D padding mask; a 4D
bool or additive mask, whose rows it checks against the bounds it derives) or returns ``None`` for a mask the kernel
cannot take (the layer then runs dense).

**Blocks.** ``[B, H or 1, n, n]`` bool over ``n = ceil(S / block)`` query and key blocks (square blocks);
``candidate_blocks`` are those holding any visible (row, key) pair, ``forced_blocks`` the ones every method keeps
(the diagonal, the first key block: the attention sink, and blocks above the diagonal that a bidirectional span
needs). Selection helpers return blocks within the candidates:

* ``last_rows_scores``: each head's attention of the last ``count`` real rows: summed per key (``vertical``) and per
  diagonal offset ``row - key`` (``slash``), ``[B, H, S]`` each (MInference, FlexPrefill);
* ``vertical_slash_blocks``: the blocks holding any selected column or diagonal (``line_blocks``: by block);
* ``cover``: per row, the fewest highest-scoring entries holding a share of the row's total (FlexPrefill's
  ``gamma``, XAttention's threshold);
* ``antidiagonal_scores``: XAttention's block scores from antidiagonals of ``stride x stride`` tiles;
* ``pooled_scores``: the softmax of block-mean queries over block-mean keys (FlexPrefill's query-aware estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: rows of a 4D mask read at once when checking it (bounds its temporaries to ``B x chunk x S``)
_MASK_CHUNK = 256
#: entries of an fp32 score tensor materialised at once by the estimators (1 GiB)
_SCORE_ELEMENTS = 1 << 28


@dataclass
class Layout:
    """A layer's element mask in the rows-first order (module docstring).

    ``shift [B]``: left-padding rows of each sample (rows-first row ``i`` is the layer's row ``i + shift``, modulo
    ``S``); ``lengths [B]``: real rows; ``key_end [B, S]``: the last key each rows-first row sees (``None``: causal,
    row ``i`` sees keys ``0 .. i``; rows past a sample's length see nothing, ``-1``); ``window``: keys more than
    ``window - 1`` rows back are hidden (a sliding-window layer).
    """

    shift: torch.Tensor
    lengths: torch.Tensor
    key_end: torch.Tensor | None
    window: int | None
    padded: bool | None = None  # whether any sample is padded (read once from ``shift``; None: not yet)

    def __post_init__(self) -> None:
        if self.padded is None:
            self.padded = bool(self.shift.any())

    def rows_first(self, x: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """``x`` (the layer's row order along ``dim``) in rows-first order."""
        return self._roll(x, self.shift, dim) if self.padded else x

    def layer_order(self, x: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """``x`` (rows-first along ``dim``) back in the layer's row order."""
        return self._roll(x, -self.shift, dim) if self.padded else x

    @staticmethod
    def _roll(x: torch.Tensor, shift: torch.Tensor, dim: int) -> torch.Tensor:
        length = x.shape[dim]
        index = (torch.arange(length, device=x.device) + shift.to(x.device)[:, None]) % length  # [B, S]
        shape = [1] * x.dim()
        shape[0], shape[dim] = x.shape[0], length
        return x.gather(dim, index.view(shape).expand_as(x))


def mask_layout(mask: torch.Tensor | None, valid: torch.Tensor, window: int | None) -> Layout | None:
    """The ``Layout`` of a prompt-pass layer whose rows are ``valid [B, S]`` (left-padded) under ``mask`` (what the
    model passed its attention: ``None`` for plain causal attention, ``[B, S]`` flash padding, or ``[B, 1, S, S]``
    bool / additive float), or ``None`` where the kernel's bounds cannot express the mask exactly.

    A 4D mask is read in chunks of rows: each real row's last visible key gives its bound, and the row must then be
    exactly ``shift <= key <= bound`` (and inside ``window``); no ``[S, S]`` tensor is built for a ``None`` mask.
    """
    batch, length = valid.shape
    lengths = valid.sum(dim=1)
    shift = length - lengths
    columns = torch.arange(length, device=valid.device)
    if not torch.equal(valid, columns[None, :] >= shift[:, None]):
        return None  # not left-padded
    if mask is None:
        return Layout(shift, lengths, None, window) if not bool(shift.any()) else None
    if mask.dim() == 2:
        return Layout(shift, lengths, None, window) if torch.equal(mask.bool().to(valid.device), valid) else None
    if mask.dim() != 4 or mask.shape[1] != 1 or tuple(mask.shape[2:]) != (length, length):
        return None
    ends, wrong = [], torch.zeros((), dtype=torch.bool, device=mask.device)  # one read on the host, at the end
    for start in range(0, length, _MASK_CHUNK):
        rows = torch.arange(start, min(start + _MASK_CHUNK, length), device=mask.device)
        part = mask[:, 0, start : start + len(rows)]
        seen = part if part.dtype == torch.bool else part == 0
        if part.dtype != torch.bool:  # a finite bias is not a mask
            wrong |= (~seen & (part > torch.finfo(part.dtype).min / 2)).any()
        end = torch.where(seen, columns.to(mask.device), -1).amax(dim=-1)  # [B, c]
        expected = (columns[None, None, :] >= shift[:, None, None]) & (columns[None, None, :] <= end[..., None])
        if window is not None:
            expected &= columns[None, None, :] > rows[None, :, None] - window
        real = rows[None, :] >= shift[:, None]
        wrong |= ((seen != expected) & real[..., None]).any()
        ends.append(end)
    if bool(wrong):
        return None
    end = torch.cat(ends, dim=1).to(valid.device)
    key_end = Layout._roll(end - shift[:, None], shift, 1)
    key_end = torch.where(columns[None, :] < lengths[:, None], key_end, -1)
    causal = torch.where(columns[None, :] < lengths[:, None], columns[None, :], -1)
    return Layout(shift, lengths, None if torch.equal(key_end, causal) else key_end, window)


def candidate_blocks(layout: Layout, length: int, block: int) -> torch.Tensor:
    """``[B, 1, n, n]``: the blocks holding at least one (real row, key it sees) pair under ``layout``."""
    n = -(-length // block)
    device = layout.lengths.device
    index = torch.arange(n, device=device)
    live = index[None, :] * block < layout.lengths[:, None]  # [B, n]: blocks holding a real row
    if layout.key_end is None:
        last_key = torch.minimum((index[None, :] + 1) * block, layout.lengths[:, None]) - 1  # [B, n]
    else:
        padded = torch.full((layout.key_end.shape[0], n * block), -1, dtype=torch.long, device=device)
        padded[:, :length] = layout.key_end
        last_key = padded.view(-1, n, block).amax(dim=-1)
    candidates = live[:, :, None] & live[:, None, :] & (index[None, None, :] * block <= last_key[:, :, None])
    if layout.window is not None:
        first_key = (index * block - layout.window + 1).clamp(min=0)  # the first row of a block sees furthest back
        candidates &= (index[None, :] + 1) * block - 1 >= first_key[:, None]
    return candidates[:, None]


def forced_blocks(candidates: torch.Tensor) -> torch.Tensor:
    """The candidate blocks every method keeps: the diagonal, the first key block (the attention sink) and those
    above the diagonal (keys a bidirectional span lets earlier rows see)."""
    n = candidates.shape[-1]
    index = torch.arange(n, device=candidates.device)
    keep = (index[None, :] >= index[:, None]) | (index[None, :] == 0)
    return candidates & keep


def block_density(chosen: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``[B]``: the share of the candidate blocks (over heads) that ``chosen [B, H, n, n]`` computes."""
    heads = chosen.shape[1]
    total = candidates.sum(dim=(1, 2, 3)).clamp(min=1) * heads
    return (chosen & candidates).sum(dim=(1, 2, 3)) / total


def block_sum(x: torch.Tensor, block: int, dim: int = -1) -> torch.Tensor:
    """``x`` summed over consecutive ``block`` entries along ``dim`` (the last, short block padded with zeros)."""
    dim = dim % x.dim()
    pad = -x.shape[dim] % block
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:dim], pad, *x.shape[dim + 1 :])], dim=dim)
    return x.unflatten(dim, (-1, block)).sum(dim=dim + 1)


def visible(rows: torch.Tensor, layout: Layout, length: int) -> torch.Tensor:
    """``[B, R, S]`` bool: the keys rows-first rows ``rows [B, R]`` see (rows past a sample's length see none)."""
    keys = torch.arange(length, device=rows.device)
    if layout.key_end is None:
        end = torch.where(rows < layout.lengths[:, None], rows, -1)
    else:
        end = layout.key_end.gather(1, rows.clamp(0, length - 1))
    seen = (keys[None, None, :] <= end[..., None]) & (rows[..., None] >= 0)
    if layout.window is not None:
        seen &= keys[None, None, :] > rows[..., None] - layout.window
    return seen


def last_rows_scores(
    query: torch.Tensor, key: torch.Tensor, layout: Layout, count: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's softmax attention of every sample's last ``count`` real rows (rows-first ``query [B, H, S, d]``
    over ``key [B, Hkv, S, d]``, under ``layout``), summed over those rows per key (``vertical [B, H, S]``) and per
    diagonal offset ``row - key`` (``slash [B, H, S]``); fp32. Heads are computed a few at a time."""
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    rows = layout.lengths[:, None] - count + torch.arange(count, device=query.device)  # [B, Q]; < 0: none
    seen = visible(rows, layout, length)[:, None]  # [B, 1, Q, S]
    picked = query.gather(2, rows.clamp(min=0)[:, None, :, None].expand(batch, heads, count, dim))
    offsets = torch.arange(length, device=query.device)
    columns = rows[:, :, None] - offsets[None, None, :]  # [B, Q, S]: the key at each offset
    on = columns >= 0
    vertical = query.new_zeros(batch, heads, length, dtype=torch.float32)
    slash = torch.zeros_like(vertical)
    step = max(groups, _SCORE_ELEMENTS // max(1, batch * count * length) // groups * groups)
    for h in range(0, heads, step):
        k = key[:, h // groups : (h + step) // groups].repeat_interleave(groups, dim=1)
        logits = (picked[:, h : h + step] @ k.transpose(-1, -2)).float() * scale
        probs = torch.softmax(logits.masked_fill(~seen, float("-inf")), dim=-1).nan_to_num(0.0)
        vertical[:, h : h + step] = probs.sum(dim=2)
        index = columns.clamp(min=0)[:, None].expand_as(probs)
        slash[:, h : h + step] = (probs.gather(3, index) * on[:, None]).sum(dim=2)
    return vertical, slash


def vertical_slash_blocks(columns: torch.Tensor, offsets: torch.Tensor, block: int) -> torch.Tensor:
    """``[B, H, n, n]``: the causal blocks holding any selected column (``columns [B, H, S]`` bool: key ``j`` for
    every row) or diagonal (``offsets [B, H, S]`` bool: offset ``o``, the key ``row - o`` of every row).

    A column in key block ``j`` lists ``(i, j)`` for every ``i >= j``; an offset ``o = a * block + c`` lists the
    block diagonals ``a`` and, when ``c > 0``, ``a + 1``.
    """
    n = -(-columns.shape[-1] // block)
    column_blocks = block_sum(columns.float(), block) > 0  # [B, H, n]
    per_block = block_sum(offsets.float(), block) > 0
    offsets_within = torch.cat([offsets, offsets.new_zeros(*offsets.shape[:-1], -offsets.shape[-1] % block)], dim=-1)
    spill = offsets_within.unflatten(-1, (n, block))[..., 1:].any(dim=-1)  # offsets reaching diagonal a + 1
    diagonals = per_block | torch.cat([spill.new_zeros(*spill.shape[:-1], 1), spill[..., :-1]], dim=-1)
    return line_blocks(column_blocks, diagonals)


def line_blocks(columns: torch.Tensor, diagonals: torch.Tensor) -> torch.Tensor:
    """``[B, H, n, n]``: the causal blocks in a chosen key-block column (``columns [B, H, n]``: ``(i, j)`` for every
    ``i >= j``) or block diagonal (``diagonals [B, H, n]``: diagonal ``a`` is ``(i, i - a)``)."""
    n = columns.shape[-1]
    index = torch.arange(n, device=columns.device)
    distance = index[:, None] - index[None, :]  # [n, n]: i - j
    by_diagonal = diagonals[..., distance.clamp(min=0)]  # [B, H, n, n]
    return (distance >= 0) & (by_diagonal | columns[:, :, None, :])


def cover(scores: torch.Tensor, allowed: torch.Tensor, share: float, least: int = 0) -> torch.Tensor:
    """Per row of ``scores [..., m]`` (>= 0), the fewest ``allowed`` entries, highest first, whose sum reaches
    ``share`` of the allowed total, and at least the ``least`` highest; bool like ``scores``. ``share >= 1`` keeps
    every allowed entry (rounding could stop a cumulative sum short of the total)."""
    allowed = allowed.expand_as(scores)
    if share >= 1.0:
        return allowed.clone()
    masked = torch.where(allowed, scores.float(), -1.0)
    ordered, order = masked.sort(dim=-1, descending=True, stable=True)
    kept_scores = ordered.clamp(min=0)
    before = kept_scores.cumsum(dim=-1) - kept_scores
    total = kept_scores.sum(dim=-1, keepdim=True)
    rank = torch.arange(scores.shape[-1], device=scores.device)
    take = ((before < share * total) | (rank < least)) & (ordered >= 0)
    return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter(-1, order, take) & allowed


def antidiagonal_scores(
    query: torch.Tensor, key: torch.Tensor, layout: Layout, stride: int, block: int, scale: float
) -> torch.Tensor:
    """XAttention's block scores ``[B, H, n, n]`` (fp32): rows-first ``query`` and ``key`` cut into ``stride x
    stride`` tiles, each tile scored by the sum of its antidiagonal (query ``a * stride + stride - 1 - t`` with key
    ``c * stride + t``), ``scale / stride`` times that sum softmaxed over the causal tiles of each tile row (rows past a
    sample's length count as zeros, tiles wholly past it are hidden), and the probabilities summed over each ``block x
    block`` block."""
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    n = -(-length // block)
    padded = n * block

    rows = torch.arange(length, device=query.device)
    real_rows = (rows[None, :] < layout.lengths[:, None])[:, None, :, None]  # padding rows score as zeros

    def tiles(x: torch.Tensor, reverse: bool) -> torch.Tensor:
        x = x * real_rows
        x = torch.cat([x, x.new_zeros(*x.shape[:2], padded - length, dim)], dim=2)
        x = x.unflatten(2, (padded // stride, stride))  # [B, H, T, stride, d]
        return (x.flip(3) if reverse else x).flatten(3)  # [B, H, T, stride * d]

    q, k = tiles(query, reverse=True), tiles(key, reverse=False)
    count = padded // stride
    tile = torch.arange(count, device=query.device)
    real = tile[None, :] * stride < layout.lengths[:, None]  # [B, T]
    per_block = block // stride
    out = query.new_zeros(batch, heads, n, n, dtype=torch.float32)
    rows_step = max(per_block, _SCORE_ELEMENTS // max(1, batch * heads * count) // per_block * per_block)
    for start in range(0, count, rows_step):
        stop = min(start + rows_step, count)
        logits = torch.einsum("bhgtd,bhsd->bhgts", q[:, :, start:stop].unflatten(1, (-1, groups)), k[:, :, :])
        logits = logits.flatten(1, 2).float() * (scale / stride)
        hidden = (tile[None, None, :] > tile[start:stop, None][None]) | ~real[:, None, :]  # [B, r, T]
        probs = torch.softmax(logits.masked_fill(hidden[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
        sums = block_sum(block_sum(probs, per_block, dim=-1), per_block, dim=-2)
        out[:, :, start // per_block : start // per_block + sums.shape[2]] = sums
    return out


def pooled_scores(query: torch.Tensor, key: torch.Tensor, layout: Layout, block: int, scale: float) -> torch.Tensor:
    """``[B, H, n, n]`` fp32: the softmax, over the causal key blocks, of each query block's mean query (its real
    rows) against each key block's mean key."""
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    real = (torch.arange(length, device=query.device)[None, :] < layout.lengths[:, None]).to(query.dtype)
    counts = block_sum(real, block).clamp(min=1)[:, None, :, None]  # [B, 1, n, 1]
    mean_q = block_sum(query * real[:, None, :, None], block, dim=2) / counts
    mean_k = block_sum(key * real[:, None, :, None], block, dim=2) / counts
    logits = (mean_q.float() @ mean_k.float().repeat_interleave(groups, dim=1).transpose(-1, -2)) * scale
    n = logits.shape[-1]
    index = torch.arange(n, device=query.device)
    live = index[None, :] * block < layout.lengths[:, None]  # [B, n]
    hidden = (index[None, :] > index[:, None])[None] | ~live[:, None, :]
    return torch.softmax(logits.masked_fill(hidden[:, None], float("-inf")), dim=-1).nan_to_num(0.0)


def js_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The square root of the Jensen-Shannon divergence (natural log) of distributions over the last dim."""
    p = p / p.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    q = q / q.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (a.clamp(min=1e-30) / m.clamp(min=1e-30)).log(), 0.0).sum(dim=-1)

    return (0.5 * kl(p) + 0.5 * kl(q)).clamp(min=0).sqrt()
