"""The vision methods after the tower (VisionZip, DivPrune, CDPruner, zeroth-order, MustDrop's merge): their pure
helpers against brute force, their runtime signals, exact counts with images and videos, and bad input.

Keep-everything identity and keep=0.25 counts on every family and backend are in tests/test_invariants.py (it
parametrises every registered method).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import greedy, max_logit_diff

import vlmzip
from vlmzip.errors import PolicyError
from vlmzip.eval.tiny import FAMILIES, random_inputs, split_batch, tiny_model
from vlmzip.methods.visionzip import VisionZip
from vlmzip.registry import adapter_for
from vlmzip.scoring import projection_sensitivity
from vlmzip.selection import greedy_diverse, greedy_dpp, greedy_max_min, join_nearest, merge_rows, spatial_windows

METHODS = ["visionzip", "divprune", "cdpruner", "zeroth-order", "mustdrop-vision"]
QWEN = [family for family in FAMILIES if family.startswith("qwen")]


def _cosine_distance(points: torch.Tensor) -> torch.Tensor:
    unit = torch.nn.functional.normalize(points, dim=-1)
    return (1 - unit @ unit.T).fill_diagonal_(0)


# -- pure helpers against brute force -------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_greedy_max_min_is_farthest_point_and_within_twice_the_best(seed):
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    distance = _cosine_distance(points)
    chosen = greedy_max_min(distance, 4).tolist()
    # step by step, as the definition says (a plain loop over candidates)
    nearest = [min(distance[i, j].item() for j in range(9) if j != i) for i in range(9)]
    expected = [max(range(9), key=lambda i: (nearest[i], -i))]
    while len(expected) < 4:
        rest = [i for i in range(9) if i not in expected]
        expected.append(max(rest, key=lambda i: (min(distance[i, j].item() for j in expected), -i)))
    assert chosen == expected

    def spread(subset) -> float:
        return min(distance[i, j].item() for i, j in itertools.combinations(subset, 2))

    best = max(spread(subset) for subset in itertools.combinations(range(9), 4))
    assert spread(chosen) >= best / 2 - 1e-12  # farthest-point's guarantee for max-min diversity


@pytest.mark.parametrize("seed", range(5))
def test_greedy_dpp_equals_brute_force_log_det_greedy(seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(10, 12, generator=generator, dtype=torch.float64), dim=-1)
    quality = torch.rand(10, generator=generator, dtype=torch.float64)
    kernel = quality[:, None] * (features @ features.T) * quality[None, :]
    chosen: list[int] = []
    for _ in range(6):
        gains = {i: torch.logdet(kernel[chosen + [i]][:, chosen + [i]]).item() for i in range(10) if i not in chosen}
        chosen.append(max(gains, key=lambda i: (gains[i], -i)))
    assert greedy_dpp(kernel, 6).tolist() == chosen


def test_greedy_dpp_fills_a_spent_rank_by_quality():
    features = torch.nn.functional.normalize(torch.randn(8, 2, dtype=torch.float64), dim=-1)  # rank 2
    quality = torch.linspace(0.2, 1.0, 8, dtype=torch.float64)
    kernel = quality[:, None] * (features @ features.T) * quality[None, :]
    chosen = greedy_dpp(kernel, 5).tolist()
    assert len(set(chosen)) == 5
    assert chosen[2:] == [i for i in range(7, -1, -1) if i not in chosen[:2]][:3]


def test_greedy_diverse_discounts_redundant_items():
    scores = torch.tensor([1.0, 0.95, 0.5])
    similarity = torch.tensor([[1.0, 0.99, 0.0], [0.99, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert greedy_diverse(scores, similarity, 2, 0.0).tolist() == [0, 1]  # sensitivity alone
    assert greedy_diverse(scores, similarity, 2, 1.0).tolist() == [0, 2]  # item 1 nearly repeats item 0


def test_projection_sensitivity_equals_a_per_token_loop():
    torch.manual_seed(0)
    projector = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 5)).double()

    def project(inputs):  # [m, U, D] -> [m, E], as an adapter's projector of U-vector groups
        return projector(inputs.flatten(1)) if inputs.shape[1] > 1 else projector(inputs[:, 0])

    inputs = torch.randn(7, 1, 6, dtype=torch.float64)
    batched = projection_sensitivity(project, inputs, directions=4, epsilon=0.01, seed=3)
    directions = torch.randn(4, 1, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = []
    for token in inputs:
        base, changes = project(token[None]), []
        for direction in directions:
            move = 0.01 * token.norm() * direction / direction.norm()
            changes.append((project((token + move)[None]) - base).norm() / move.norm())
        expected.append(torch.stack(changes).mean())
    torch.testing.assert_close(batched, torch.stack(expected).float(), rtol=1e-5, atol=1e-7)


def test_spatial_windows_tile_each_frame():
    tiles = spatial_windows((2, 4, 5), 3).view(2, 4, 5)
    assert tiles[0].tolist() == [[0, 0, 0, 1, 1]] * 3 + [[2, 2, 2, 3, 3]]
    assert torch.equal(tiles[1], tiles[0] + 4)  # windows never span two frames


def test_join_nearest_then_merge_rows_averages_each_target_with_its_joiners():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [1.0, 0.2]])
    sources = join_nearest(features, torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert sources.tolist() == [0, 1, 0, 1, 0]
    merged = merge_rows(features, sources, 2)
    torch.testing.assert_close(merged, torch.stack([features[[0, 2, 4]].mean(0), features[[1, 3]].mean(0)]))


def test_visionzip_published_splits():
    method = VisionZip()
    assert [method.split(total) for total in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]
    assert VisionZip(keep=64, contextual=16).split(64) == (48, 16)


# -- through the runtime ----------------------------------------------------------------------------------------
def _spy(monkeypatch, method_class):
    """Record (item, selection) of every item the runtime hands ``method_class`` (its ``select_batch`` calls)."""
    seen, original = [], method_class.select_batch

    def spy(self, items):
        selections = original(self, items)
        seen.extend(zip(items, selections))
        return selections

    monkeypatch.setattr(method_class, "select_batch", spy)
    return seen


def test_visionzip_dominant_tokens_are_the_cls_attention_top_and_contextual_tokens_are_means(monkeypatch):
    model = tiny_model("llava", attn_implementation="eager")
    inputs = random_inputs(model, [1, 2], text_lengths=[3, 7])
    tower = model.model.vision_tower
    with torch.no_grad():
        attentions = tower(inputs["pixel_values"], output_attentions=True).attentions
    layers = len(attentions)
    feature_layer = model.config.vision_feature_layer % (layers + 1) - 1  # its output is the features used
    cls_row = attentions[feature_layer][:, :, 0, 1:].sum(dim=1)  # [images, patches], summed over heads
    seen = _spy(monkeypatch, VisionZip)
    vlmzip.compress(model, "visionzip:keep=8")
    greedy(model, inputs, 1)
    assert len(seen) == 3 and vlmzip.stats(model).visual_tokens_kept["vision"] == [8, 16]
    for image, (item, selection) in enumerate(seen):
        dominant, contextual = VisionZip(keep=8).split(8)
        top = set(cls_row[image].argsort(descending=True)[:dominant].tolist())
        keep = selection.keep.tolist()
        assert top <= set(keep) and len(keep) == 8
        for slot, token in enumerate(keep):
            members = (selection.sources == slot).nonzero().flatten()
            expected = item.features[token] if token in top else item.features[members].mean(dim=0)
            torch.testing.assert_close(selection.embeddings[slot], expected)
        assert sum(int((selection.sources == keep.index(t)).sum()) > 1 for t in keep if t not in top) <= contextual


def test_tower_features_projected_are_the_features(family, monkeypatch):
    """The new signal's contract: the adapter's projector on ``tower_features`` gives the item's features."""
    from vlmzip.methods.zeroth_order import ZerothOrder

    model = tiny_model(family)
    videos = {"video_frames": [2, 4]} if family in QWEN else {}
    inputs = random_inputs(model, [2, 1], text_lengths=[4, 6], **videos)
    seen = _spy(monkeypatch, ZerothOrder)
    vlmzip.compress(model, "zeroth-order:keep=0.5")
    greedy(model, inputs, 1)
    assert len(seen) == len(adapter_for(model).visual_items(inputs, []))  # Qwen: 3 images, 2 videos; NeXT: views
    for item, _ in seen:
        towers = item.signals["tower_features"]
        assert towers.dim() == 3 and towers.shape[0] == item.num_tokens
        torch.testing.assert_close(item.project(towers), item.features, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("qwen", QWEN)
def test_images_and_videos_exact_counts_and_batch_equals_each_sample_alone(qwen):
    model = tiny_model(qwen)
    batch = random_inputs(model, [1, 0, 2], text_lengths=[4, 6, 5], video_frames=[4, 2, 0])
    for method in METHODS:
        policy = f"{method}:keep=0.25" + (",threshold=0.0" if method == "mustdrop-vision" else "")
        vlmzip.compress(model, policy)
        together = greedy(model, batch, 2)
        stats = vlmzip.stats(model)
        assert stats.visual_tokens_in == [48, 16, 32]
        if method == "mustdrop-vision":  # keep caps it; threshold 0 merges every window of two or more tokens
            assert all(k <= n for k, n in zip(stats.visual_tokens_kept["vision"], [12, 4, 8]))
        else:
            assert stats.visual_tokens_kept["vision"] == [12, 4, 8], method
        for row, single in enumerate(split_batch(model, batch)):
            alone = greedy(model, single, 2)
            assert vlmzip.stats(model).visual_positions_kept["vision"][0] == [
                p - (batch["input_ids"].shape[1] - single["input_ids"].shape[1])
                for p in stats.visual_positions_kept["vision"][row]
            ], method
            assert torch.equal(alone.sequences[0, -2:], together.sequences[row, -2:]), method


@pytest.mark.parametrize("qwen", QWEN)
def test_videos_keep_everything_equals_the_unwrapped_model(qwen):
    model = tiny_model(qwen)
    batch = random_inputs(model, [1, 0], text_lengths=[4, 6], video_frames=[4, 2])
    reference = greedy(model, batch, 3)
    for method in METHODS:
        vlmzip.compress(model, f"{method}:threshold=2.0" if method == "mustdrop-vision" else f"{method}:keep=1.0")
        out = greedy(model, batch, 3)
        assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) < 1e-5, method


def test_mustdrop_vision_merges_windows_of_identical_tokens_and_counts_them_kept(monkeypatch):
    from vlmzip.methods.mustdrop_vision import MustDropVision
    from vlmzip.stages import VisualItem

    features = torch.randn(16, 8)
    features[[0, 1, 2, 4, 5, 6, 8, 9, 10]] = features[0].clone()  # the first 3x3 window of a 4x4 grid: one token
    attention = torch.zeros(16)
    attention[[2, 15]] = torch.tensor([1.0, 2.0])
    item = VisualItem(0, 0, "image", torch.arange(16), (1, 4, 4), features=features)
    item.signals["vision_attention"] = attention
    selection = MustDropVision().select(item)
    assert selection.keep.tolist() == [3, 5, 7, 11, 12, 13, 14, 15]  # the window's centre (5) stands for it
    assert (selection.sources == 1).sum() == 9
    torch.testing.assert_close(selection.embeddings[1], features[0])
    assert selection.protected.tolist() == [15]  # the key set: 8% of 16 tokens, the most attended one
    # token 2 is the second most attended: merged into the window, its survivor (the centre, 5) is protected
    assert MustDropVision(key_set=0.125).select(item).protected.tolist() == [5, 15]
    capped = MustDropVision(keep=3).select(item)
    assert len(capped.keep) == 3  # every window merged (4 tokens) and still over the cap: evenly spaced


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_the_key_set_survives_a_prefill_cut(name):
    model = tiny_model(name)
    inputs = random_inputs(model, [1, 1], seed=7)
    kept = {}
    for key_set in (0.0, 0.25):
        vlmzip.compress(model, f"mustdrop-vision:key_set={key_set}+fastv:layer=1,keep=1")
        with torch.no_grad():
            model(**inputs)
        stats = vlmzip.stats(model)
        vlmzip.restore(model)
        kept[key_set] = (stats.visual_positions_kept["vision"], stats.visual_positions_kept["prefill"])
    assert [len(p) for p in kept[0.0][1]] == [1, 1]  # no key set: FastV keeps its one token
    for vision, prefill in zip(*kept[0.25]):
        assert len(prefill) >= 4 and set(prefill) <= set(vision)  # 4 of 16 tokens' survivors, and FastV's choice


# -- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy, words",
    [
        ("visionzip:keep=64,contextual=64", ["contextual=64", "larger than the budget", "keep=64"]),
        ("visionzip:keep=0.5,contextual=1.0", ["contextual=1.0", "fraction below 1"]),
        ("visionzip:contextual=-1", ["contextual=-1"]),
        ("zeroth-order:directions=0", ["directions=0", ">= 1"]),
        ("zeroth-order:epsilon=0.0", ["epsilon=0.0", "(0, 1]"]),
        ("zeroth-order:diversity=2.0", ["diversity=2.0", "[0, 1]"]),
        ("mustdrop-vision:window=1", ["window=1", ">= 2"]),
        ("divprune:keep=0", ["keep=0"]),
        ("cdpruner:theta=0.5", ["unknown parameter 'theta'"]),
    ],
)
def test_bad_parameters_name_the_problem(policy, words):
    with pytest.raises(PolicyError) as error:
        vlmzip.Policy.parse(policy)
    assert isinstance(error.value, ValueError)
    assert all(word in str(error.value) for word in words), str(error.value)
