"""The pure helpers behind every method, against plain-Python references on random inputs."""

from __future__ import annotations

import pytest
import torch

from vlmzip.budget import kept_count
from vlmzip.scoring import attention_mass
from vlmzip.selection import gather_rows, pack_left, top_k_mask


def test_kept_count():
    assert kept_count(0.25, 16) == 4
    assert kept_count(0.25, 10) == 3  # rounds half up: 2.5 -> 3
    assert kept_count(0.01, 16) == 1  # never drops an item entirely
    assert kept_count(64, 16) == 16 and kept_count(3, 16) == 3
    assert kept_count(1.0, 0) == 0


@pytest.mark.parametrize("seed", range(5))
def test_top_k_mask_matches_sorting_each_row(seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, 12, generator=gen)
    candidates = torch.rand(4, 12, generator=gen) > 0.4
    counts = torch.randint(0, 6, (4,), generator=gen)
    chosen = top_k_mask(scores, candidates, counts)
    for row in range(4):
        ids = candidates[row].nonzero().squeeze(1)
        best = ids[scores[row, ids].argsort(descending=True)[: counts[row]]]
        assert set(chosen[row].nonzero().squeeze(1).tolist()) == set(best.tolist())


@pytest.mark.parametrize("seed", range(5))
def test_pack_left_keeps_order_and_pads_on_the_left(seed):
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(3, 10, generator=gen) > 0.5
    keep[0] = True  # one full row sets the width
    index, valid = pack_left(keep)
    assert index.shape == valid.shape == (3, 10)
    for row in range(3):
        kept = keep[row].nonzero().squeeze(1)
        width = len(kept)
        assert valid[row].tolist() == [False] * (10 - width) + [True] * width
        assert index[row, 10 - width :].tolist() == kept.tolist()


def test_gather_rows_broadcast_batch_and_multimodal_positions():
    index = torch.tensor([[0, 2], [1, 3]])
    cos = torch.arange(8.0).view(1, 4, 2)  # batch 1, broadcast
    assert gather_rows(cos, index, dim=1).tolist() == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]
    positions = torch.arange(24).view(3, 2, 4)  # M-RoPE [3, B, L]
    cut = gather_rows(positions, index, dim=2, batch_dim=1)
    assert cut.shape == (3, 2, 2)
    assert cut[:, 1].tolist() == positions[:, 1, [1, 3]].tolist()


@pytest.mark.parametrize("kind", ["none", "bool", "float"])
def test_attention_mass_matches_full_softmax(kind):
    gen = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 4, 5, 8, generator=gen), torch.randn(2, 2, 7, 8, generator=gen)
    allowed = torch.rand(2, 1, 5, 7, generator=gen) > 0.3
    allowed[..., 0] = True
    mask = {"none": None, "bool": allowed, "float": torch.where(allowed, 0.0, -1e9)}[kind]
    logits = query @ key.repeat_interleave(2, dim=1).transpose(-1, -2) * 0.3
    if kind != "none":
        logits = logits.masked_fill(~allowed, float("-inf"))
    expected = logits.softmax(-1).mean(dim=(1, 2))
    got = attention_mass(query, key, 0.3, mask, chunk_size=2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(2))
