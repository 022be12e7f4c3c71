"""The block-sparse selection helpers (``vlmzip.sparse``, ``vlmzip.blindsight.template_blocks``) against plain
formulas written element by element on random inputs."""

from __future__ import annotations

import pytest
import torch

from vlmzip.blindsight import template_blocks
from vlmzip.sparse import (
    Layout,
    antidiagonal_scores,
    block_density,
    candidate_blocks,
    cover,
    forced_blocks,
    js_distance,
    last_rows_scores,
    mask_layout,
    pooled_scores,
    vertical_slash_blocks,
    visible,
)


def _layout(lengths: list[int], length: int, key_end=None, window=None) -> Layout:
    lengths_t = torch.tensor(lengths)
    return Layout(length - lengths_t, lengths_t, key_end, window)


def _padded_causal(lengths: list[int], length: int, window: int | None = None) -> torch.Tensor:
    """The ``[B, 1, S, S]`` bool mask of left-padded causal attention (what sdpa gets for a padded batch)."""
    i = torch.arange(length)
    shift = torch.tensor([length - n for n in lengths])
    mask = (i[None, None, :] <= i[None, :, None]) & (i[None, None, :] >= shift[:, None, None])
    mask &= i[None, :, None] >= shift[:, None, None]  # padding rows see nothing
    if window is not None:
        mask &= i[None, None, :] > i[None, :, None] - window
    return mask[:, None]


def _element_mask(layout: Layout, length: int) -> torch.Tensor:
    """``[B, S, S]`` rows-first: row ``i`` sees key ``j`` (plain loops)."""
    out = torch.zeros(len(layout.lengths), length, length, dtype=torch.bool)
    for b, n in enumerate(layout.lengths.tolist()):
        for i in range(n):
            end = i if layout.key_end is None else int(layout.key_end[b, i])
            for j in range(end + 1):
                out[b, i, j] = layout.window is None or j > i - layout.window
    return out


def _block_any(mask: torch.Tensor, block: int) -> torch.Tensor:
    """``[..., S, S]`` -> ``[..., n, n]``: blocks holding any True."""
    length = mask.shape[-1]
    n = -(-length // block)
    padded = torch.zeros(*mask.shape[:-2], n * block, n * block, dtype=torch.bool)
    padded[..., :length, :length] = mask
    return padded.unflatten(-1, (n, block)).unflatten(-3, (n, block)).any(dim=-1).any(dim=-2)


# -- the mask as kernel bounds -------------------------------------------------------------------------------------
def test_a_none_mask_is_plain_causal_and_costs_no_tensor():
    layout = mask_layout(None, torch.ones(2, 9, dtype=torch.bool), window=4)
    assert layout.key_end is None and layout.window == 4 and layout.lengths.tolist() == [9, 9] and not layout.padded
    # a None mask with padding rows could not be told apart from a wrong one: dense
    assert mask_layout(None, torch.arange(9)[None, :] >= torch.tensor([[0], [2]]), None) is None


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_a_padded_causal_mask_is_a_shift_per_sample(window, dtype):
    lengths, length = [9, 6], 9
    mask = _padded_causal(lengths, length, window)
    if dtype != torch.bool:  # eager's additive mask
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    valid = torch.arange(length)[None, :] >= torch.tensor([[0], [3]])
    layout = mask_layout(mask, valid, window)
    assert layout.shift.tolist() == [0, 3] and layout.lengths.tolist() == lengths and layout.key_end is None
    assert layout.window == window


def test_bidirectional_spans_become_key_ends_and_anything_else_runs_dense():
    lengths, length = [8, 6], 8
    mask = _padded_causal(lengths, length)
    mask[1, 0, 4, 5] = mask[1, 0, 4, 6] = mask[1, 0, 5, 6] = True  # rows 4-6 of sample 1 attend as one image
    valid = torch.arange(length)[None, :] >= torch.tensor([[0], [2]])
    layout = mask_layout(mask, valid, None)
    expected = torch.tensor([list(range(8)), [0, 1, 4, 4, 4, 5, -1, -1]])  # rows-first: sample 1 shifted by 2
    assert torch.equal(layout.key_end, expected)
    assert torch.equal(_element_mask(layout, length), _rolled(mask, layout))
    hole = mask.clone()
    hole[0, 0, 7, 3] = False  # a key hidden inside a row's bounds
    assert mask_layout(hole, valid, None) is None
    bias = torch.zeros(mask.shape).masked_fill(~mask, -1e30)
    bias[0, 0, 7, 3] = -2.0  # a finite bias, not a mask
    assert mask_layout(bias, valid, None) is None
    assert mask_layout(mask, valid, window=2) is None  # the mask has no such window


def _rolled(mask: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The 4D mask in rows-first order (rows and keys shifted), padding rows and keys dropped."""
    out = torch.zeros(mask.shape[0], mask.shape[-1], mask.shape[-1], dtype=torch.bool)
    for b, (shift, n) in enumerate(zip(layout.shift.tolist(), layout.lengths.tolist())):
        out[b, :n, :n] = mask[b, 0, shift:, shift:]
    return out


def test_rows_first_and_back_are_inverse_shifts():
    layout = _layout([5, 3], 5)
    x = torch.arange(10.0).view(2, 1, 5, 1)
    first = layout.rows_first(x)
    assert first[1, 0, :, 0].tolist() == [7.0, 8.0, 9.0, 5.0, 6.0]
    assert torch.equal(layout.layer_order(first), x)


# -- blocks --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [None, 5])
def test_candidates_are_the_blocks_holding_a_visible_pair(window):
    torch.manual_seed(1)
    length, block = 37, 8
    key_end = torch.stack([torch.arange(length), torch.arange(length)])
    key_end[1, 10:14] = 13  # a bidirectional span
    key_end[1, 30:] = -1  # sample 1 is 30 rows long
    layout = _layout([37, 30], length, key_end, window)
    expected = _block_any(_element_mask(layout, length), block)
    assert torch.equal(candidate_blocks(layout, length, block)[:, 0], expected)
    causal = _layout([37, 30], length, None, window)
    assert torch.equal(candidate_blocks(causal, length, block)[:, 0], _block_any(_element_mask(causal, length), block))


def test_forced_blocks_are_the_diagonal_the_sink_and_spans_above_it():
    candidates = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    candidates[0, 0, 1, 2] = True
    forced = forced_blocks(candidates)[0, 0]
    assert forced.nonzero().tolist() == [[0, 0], [1, 0], [1, 1], [1, 2], [2, 0], [2, 2], [3, 0], [3, 3]]
    chosen = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    chosen[0, 0] = candidates[0, 0]
    assert block_density(chosen, candidates).tolist() == [0.5]


def test_vertical_slash_blocks_are_the_blocks_holding_a_chosen_line():
    torch.manual_seed(2)
    batch, heads, length, block = 2, 3, 48, 8
    columns = torch.rand(batch, heads, length) < 0.05
    offsets = torch.rand(batch, heads, length) < 0.05
    rows, keys = torch.arange(length)[:, None], torch.arange(length)[None, :]
    lines = columns[:, :, None, :] | offsets[..., (rows - keys).clamp(min=0)]
    pattern = lines & (keys <= rows)
    assert torch.equal(vertical_slash_blocks(columns, offsets, block), _block_any(pattern, block))


def test_cover_keeps_the_fewest_highest_entries_holding_the_share():
    torch.manual_seed(3)
    scores = torch.rand(4, 7) ** 3
    allowed = torch.rand(4, 7) < 0.8
    for share, least in ((0.5, 0), (0.9, 0), (0.3, 3)):
        chosen = cover(scores, allowed, share, least)
        for row in range(4):
            ranked = sorted((s, i) for i, (s, a) in enumerate(zip(scores[row].tolist(), allowed[row].tolist())) if a)[
                ::-1
            ]
            total, kept, expected = sum(s for s, _ in ranked), 0.0, set()
            for rank, (s, i) in enumerate(ranked):
                if kept < share * total or rank < least:
                    expected.add(i)
                    kept += s
            assert set(chosen[row].nonzero().flatten().tolist()) == expected
    assert torch.equal(cover(scores, allowed, 1.0), allowed)


# -- estimates -----------------------------------------------------------------------------------------------------
def _probs(q: torch.Tensor, k: torch.Tensor, seen: torch.Tensor, scale: float) -> torch.Tensor:
    logits = (q @ k.T) * scale
    return torch.softmax(logits.masked_fill(~seen, float("-inf")), dim=-1).nan_to_num(0.0)


def test_last_rows_scores_sum_each_heads_attention_per_key_and_per_diagonal():
    torch.manual_seed(4)
    batch, heads, kv_heads, length, dim, count = 2, 4, 2, 21, 8, 5
    query, key = torch.randn(batch, heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    layout = _layout([21, 17], length, window=9)
    vertical, slash = last_rows_scores(query, key, layout, count, 0.3)
    seen = _element_mask(layout, length)
    for b, n in enumerate([21, 17]):
        for h in range(heads):
            rows = list(range(n - count, n))
            probs = _probs(query[b, h, rows], key[b, h // 2], seen[b, rows], 0.3)
            torch.testing.assert_close(vertical[b, h], probs.sum(dim=0))
            expected = torch.zeros(length)
            for r, row in enumerate(rows):
                for j in range(row + 1):
                    expected[row - j] += probs[r, j]
            torch.testing.assert_close(slash[b, h], expected)


def test_antidiagonal_scores_follow_xattention():
    torch.manual_seed(5)
    batch, heads, length, dim, stride, block = 2, 2, 30, 4, 4, 8
    query, key = torch.randn(batch, heads, length, dim), torch.randn(batch, 1, length, dim)
    layout = _layout([30, 22], length)
    scores = antidiagonal_scores(query, key, layout, stride, block, 0.5)
    padded = 32
    q = torch.cat([query, torch.zeros(batch, heads, padded - length, dim)], dim=2)
    k = torch.cat([key, torch.zeros(batch, 1, padded - length, dim)], dim=2)
    tiles = padded // stride
    for b, n in enumerate([30, 22]):
        q[b, :, n:] = k[b, :, n:] = 0  # rows past the length score as zeros
        for h in range(heads):
            logits = torch.zeros(tiles, tiles)
            for a in range(tiles):
                for c in range(tiles):
                    logits[a, c] = sum(
                        q[b, h, a * stride + stride - 1 - t] @ k[b, 0, c * stride + t] for t in range(stride)
                    )
            real = torch.arange(tiles) * stride < n
            seen = (torch.arange(tiles)[None, :] <= torch.arange(tiles)[:, None]) & real[None, :]
            probs = _probs(torch.eye(tiles), logits.T, seen, 0.5 / stride)  # rows of logits, softmaxed
            per = block // stride
            expected = probs.view(tiles // per, per, tiles // per, per).sum(dim=(1, 3))
            torch.testing.assert_close(scores[b, h], expected)


def test_pooled_scores_are_block_mean_queries_over_block_mean_keys():
    torch.manual_seed(6)
    query, key = torch.randn(1, 2, 20, 4), torch.randn(1, 1, 20, 4)
    layout = _layout([13], 20)
    scores = pooled_scores(query, key, layout, 8, 0.5)
    blocks = [range(0, 8), range(8, 13)]  # rows past the length (13) are padding
    mean_q = torch.stack([query[0, :, list(r)].mean(dim=1) for r in blocks], dim=1)
    mean_k = torch.stack([key[0, 0, list(r)].mean(dim=0) for r in blocks])
    for h in range(2):
        seen = torch.tensor([[True, False], [True, True]])
        torch.testing.assert_close(scores[0, h, :2, :2], _probs(mean_q[h], mean_k, seen, 0.5))


def test_js_distance():
    p = torch.tensor([[0.5, 0.5, 0.0]])
    assert js_distance(p, p).item() == pytest.approx(0.0, abs=1e-6)
    q = torch.tensor([[0.0, 0.0, 1.0]])
    assert js_distance(p, q).item() == pytest.approx(torch.log(torch.tensor(2.0)).sqrt().item(), rel=1e-5)


def test_visible_rows_past_the_length_see_nothing():
    layout = _layout([4], 6)
    assert visible(torch.tensor([[3, 5]]), layout, 6)[0].tolist() == [[True] * 4 + [False] * 2, [False] * 6]


# -- BlindSight's templates ----------------------------------------------------------------------------------------
def test_blindsight_templates_follow_the_documents():
    # rows: 2 text, image 0 (4 rows), 2 text, image 1 (4 rows), 4 instruction rows; blocks of 2
    items = torch.tensor([[-1, -1, 0, 0, 0, 0, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1]])
    templates = template_blocks(items, torch.tensor([16]), 2)[0] & torch.ones(8, 8, dtype=torch.bool).tril()
    sink, intra, intra_sink, dense = templates
    # documents by block: 0, 1, 1, 1, 2, 2, instruction, instruction
    assert torch.equal(sink[6:], dense[6:]) and not sink[:6].any()
    assert intra[5].nonzero().flatten().tolist() == [4, 5] and intra[3].nonzero().flatten().tolist() == [1, 2, 3]
    assert intra_sink[5].nonzero().flatten().tolist() == [0, 1, 4, 5]  # each document's first block
    assert torch.equal(dense, torch.ones(8, 8, dtype=torch.bool).tril())
