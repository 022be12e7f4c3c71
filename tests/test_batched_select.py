"""Batched vision choices (``VisionMethod.select_batch`` and the batched greedy helpers) against the per-item loops
they replace: the same kept indices on random inputs of equal and mixed sizes, with ties, and one call per request.
"""

from __future__ import annotations

import pytest
import torch
from conftest import greedy
from test_tower_cut import _deep_tower
from torch.nn import functional as F

import vlmzip
from vlmzip.eval.tiny import random_inputs, tiny_model
from vlmzip.methods.cdpruner import CDPruner
from vlmzip.methods.divprune import DivPrune
from vlmzip.methods.zeroth_order import ZerothOrder
from vlmzip.selection import (
    ascending,
    batched_greedy_diverse,
    batched_greedy_dpp,
    batched_greedy_max_min,
    greedy_diverse,
    greedy_dpp,
    greedy_max_min,
)
from vlmzip.stages import VisionMethod, VisualItem, VisualSelection


# -- the per-item loops as they were before batching (host-side picks), the reference -----------------------------
def _loop_max_min(distance: torch.Tensor, count: int) -> list[int]:
    n = distance.shape[0]
    distance = distance.float()
    to_chosen = (distance + torch.diag(torch.full((n,), float("inf")))).amin(dim=1)
    chosen: list[int] = []
    for step in range(count):
        pick = int(to_chosen.masked_fill(torch.tensor([i in chosen for i in range(n)]), float("-inf")).argmax())
        chosen.append(pick)
        to_chosen = distance[pick] if step == 0 else torch.minimum(to_chosen, distance[pick])
    return chosen


def _loop_dpp(kernel: torch.Tensor, count: int, floor: float = 1e-10) -> list[int]:
    n = kernel.shape[0]
    kernel = kernel.double()
    gains, factors, chosen = kernel.diagonal().clone(), kernel.new_zeros(count, n), []
    for step in range(count):
        taken = torch.tensor([i in chosen for i in range(n)])
        pick = int(gains.masked_fill(taken, float("-inf")).argmax())
        if gains[pick] <= floor:
            rest = kernel.diagonal().masked_fill(taken, float("-inf")).argsort(descending=True, stable=True)
            return chosen + rest[: count - step].tolist()
        chosen.append(pick)
        factors[step] = (kernel[pick] - factors[:step, pick] @ factors[:step]) / gains[pick].sqrt()
        gains = gains - factors[step] ** 2
    return chosen


def _loop_diverse(scores: torch.Tensor, similarity: torch.Tensor, count: int, weight: float) -> list[int]:
    redundancy, chosen = torch.zeros(len(scores)), []
    for _ in range(count):
        taken = torch.tensor([i in chosen for i in range(len(scores))])
        pick = int((scores.float() * (1 - weight * redundancy)).masked_fill(taken, float("-inf")).argmax())
        chosen.append(pick)
        redundancy = torch.maximum(redundancy, similarity[pick].float().clamp(min=0))
    return chosen


def _points(generator: torch.Generator, n: int, ties: bool) -> torch.Tensor:
    points = torch.randn(n, 6, generator=generator)
    if ties:  # repeated tokens (flat image regions): equal distances, equal gains
        points[n // 2 :] = points[: n - n // 2].clone()
    return points


def _padded(matrices: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, N, ...]`` zero-padded to the largest, and the validity mask ``[B, N]``."""
    width = max(len(m) for m in matrices)
    out = matrices[0].new_zeros(len(matrices), width, *[width] * (matrices[0].dim() - 1))
    valid = torch.zeros(len(matrices), width, dtype=torch.bool)
    for b, m in enumerate(matrices):
        out[b][tuple(slice(0, s) for s in m.shape)] = m
        valid[b, : len(m)] = True
    return out, valid


SIZES = {"equal": [10, 10, 10, 10], "mixed": [10, 7, 12, 3, 9]}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("seed", range(3))
def test_batched_greedy_helpers_equal_the_per_item_loops(seed, sizes, ties):
    generator = torch.Generator().manual_seed(seed)
    units = [F.normalize(_points(generator, n, ties), dim=-1) for n in sizes]
    counts = torch.tensor([min(n, 1 + (3 * b) % n + n // 3) for b, n in enumerate(sizes)])
    distance, valid = _padded([(1 - u @ u.T).fill_diagonal_(0) for u in units])
    similarity, _ = _padded([u @ u.T for u in units])
    scores, _ = _padded([torch.rand(len(u), generator=generator) for u in units])
    scores[:, :2] = scores[:, 2:4] if ties else scores[:, :2]
    quality = [torch.rand(len(u), generator=generator, dtype=torch.float64) for u in units]
    kernel, _ = _padded([q[:, None] * (u.double() @ u.double().T) * q[None, :] for q, u in zip(quality, units)])
    batched = {
        "max_min": batched_greedy_max_min(distance, counts, valid),
        "dpp": batched_greedy_dpp(kernel, counts, valid),
        "diverse": batched_greedy_diverse(scores, similarity, counts, 0.7, valid),
    }
    for b, (n, count) in enumerate(zip(sizes, counts.tolist())):
        loops = {
            "max_min": _loop_max_min(distance[b, :n, :n], count),
            "dpp": _loop_dpp(kernel[b, :n, :n], count),
            "diverse": _loop_diverse(scores[b, :n], similarity[b, :n, :n], count, 0.7),
        }
        for name, chosen in batched.items():
            assert chosen[b, :count].tolist() == loops[name], (name, b)
            assert (chosen[b, count:] == -1).all()
    # the per-item helpers are the batched ones on one sample
    u = units[0]
    assert greedy_max_min(distance[0, :10, :10], 4).tolist() == _loop_max_min(distance[0, :10, :10], 4)
    assert greedy_dpp(kernel[0, :10, :10], 6).tolist() == _loop_dpp(kernel[0, :10, :10], 6)
    assert greedy_diverse(scores[0, :10], u @ u.T, 5, 1.0).tolist() == _loop_diverse(scores[0, :10], u @ u.T, 5, 1.0)


def test_batched_greedy_dpp_spends_each_samples_rank_on_its_own():
    """One sample's kernel of rank 2 falls back to quality after two picks while the other's goes on by gain."""
    generator = torch.Generator().manual_seed(0)
    low = F.normalize(torch.randn(8, 2, generator=generator, dtype=torch.float64), dim=-1)
    full = F.normalize(torch.randn(8, 8, generator=generator, dtype=torch.float64), dim=-1)
    quality = torch.linspace(0.2, 1.0, 8, dtype=torch.float64)
    kernels = torch.stack([quality[:, None] * (f @ f.T) * quality[None, :] for f in (low, full)])
    chosen = batched_greedy_dpp(kernels, torch.tensor([5, 6]))
    assert chosen[0].tolist() == _loop_dpp(kernels[0], 5) + [-1]
    assert chosen[1].tolist() == _loop_dpp(kernels[1], 6)


def test_ascending_sorts_each_samples_choice_and_drops_the_padding():
    chosen = torch.tensor([[4, 0, 2], [3, 1, -1]])
    assert [k.tolist() for k in ascending(chosen)] == [[0, 2, 4], [1, 3]]


# -- the methods: all items at once == each item alone == the old per-item code -------------------------------------
def _items(seed: int, sizes: list[int]) -> list[VisualItem]:
    generator = torch.Generator().manual_seed(seed)
    projector = torch.nn.Linear(3 * 4, 6).double()
    items = []
    for index, n in enumerate(sizes):
        features = _points(generator, n, ties=index % 2 == 1).double()
        item = VisualItem(index // 2, index, "image", torch.arange(n), (1, 1, n), features=features)
        item.signals["text_embeddings"] = torch.randn(2 + index, 6, generator=generator, dtype=torch.float64)
        item.signals["tower_features"] = torch.randn(n, 3, 4, generator=generator, dtype=torch.float64)
        item.project = lambda x: projector(x.flatten(1))
        items.append(item)
    return items


def _old_select(method: VisionMethod, item: VisualItem) -> list[int]:
    """The method's choice as its per-item code made it before batching (with the reference loops)."""
    count = method.budget(item)
    if isinstance(method, DivPrune):
        unit = F.normalize(item.features.float(), dim=-1)
        return sorted(_loop_max_min(1 - unit @ unit.T, count))
    if isinstance(method, CDPruner):
        unit = F.normalize(item.features.double(), dim=-1)
        relevance = (unit @ F.normalize(item.signals["text_embeddings"].to(unit), dim=-1).T).mean(dim=1)
        span = relevance.max() - relevance.min()
        quality = (relevance - relevance.min()) / span
        return sorted(_loop_dpp(quality[:, None] * (unit @ unit.T) * quality[None, :], count))
    from vlmzip.scoring import projection_sensitivity

    inputs = item.signals["tower_features"]
    sensitivity = projection_sensitivity(item.project, inputs, method.directions, method.epsilon, method.seed)
    unit = F.normalize(item.features.float(), dim=-1)
    return sorted(_loop_diverse(sensitivity, unit @ unit.T, count, method.diversity))


@pytest.mark.parametrize("method", [DivPrune(keep=0.4), CDPruner(keep=5), ZerothOrder(keep=0.5)], ids=str)
@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("seed", range(3))
def test_select_batch_equals_each_item_alone_and_the_per_item_code(method, sizes, seed):
    items = _items(seed, sizes)
    together = method.select_batch(items)
    for item, selection in zip(items, together):
        assert selection.keep.tolist() == method.select(item).keep.tolist()
        assert selection.keep.tolist() == _old_select(method, item)
        assert len(selection.keep) == method.budget(item) and not selection.merged


def test_select_batch_keeps_everything_without_a_choice():
    items = _items(0, [6, 4])
    for method in (DivPrune(keep=1.0), CDPruner(keep=1.0), ZerothOrder(keep=1.0)):
        assert [s.keep.tolist() for s in method.select_batch(items)] == [list(range(6)), list(range(4))]


# -- the contract ---------------------------------------------------------------------------------------------------
def test_one_step_serves_both_views():
    """A method overriding ``select_batch`` answers ``select`` with it; one overriding ``select`` gets a batch by
    it; one overriding ``score`` gets both."""

    class Batched(VisionMethod):
        name = "test-batched"

        def select_batch(self, items):
            return [VisualSelection(torch.tensor([item.index])) for item in items]

    class Scored(VisionMethod):
        name = "test-scored"

        def score(self, item):
            return -torch.arange(item.num_tokens, dtype=torch.float)

    items = _items(0, [5, 5, 3])
    assert Batched().select(items[2]).keep.tolist() == [2]
    assert [s.keep.tolist() for s in Scored(keep=2).select_batch(items)] == [[0, 1]] * 3


@pytest.mark.parametrize("policy", ["divprune:keep=0.25", "divprune:keep=0.25,at_layer=1"])
def test_the_runtime_chooses_once_per_request(policy, monkeypatch):
    model = _deep_tower("llava") if "at_layer" in policy else tiny_model("llava")
    inputs = random_inputs(model, images_per_sample=[1, 2], text_lengths=[5, 3])
    calls = []
    original = DivPrune.select_batch
    monkeypatch.setattr(DivPrune, "select_batch", lambda self, items: calls.append(len(items)) or original(self, items))
    greedy(vlmzip.compress(model, policy=policy), inputs, 1)
    assert calls == [3]
