"""FastVID (``fastvid``): its segmentation and per-segment budget on hand-made frames, its selection helpers against
plain loops, exact counts and batch independence on the Qwen families' videos (sdpa and eager), and refusing images.

Keep-everything identity and keep=0.25 counts on every video family and backend are in tests/test_invariants.py
(it runs video-only methods, by their ``media``, on a left-padded batch of videos).
"""

from __future__ import annotations

import pytest
import torch
from conftest import greedy

import vlmzip
from vlmzip.errors import InputError, PolicyError
from vlmzip.eval.tiny import FAMILIES, random_inputs, split_batch, tiny_model, visual_mask
from vlmzip.methods.fastvid import FastVID
from vlmzip.registry import adapter_for
from vlmzip.selection import (
    density_peaks,
    grouped_density_peaks,
    join_nearest,
    preferred_groups,
    split_proportionally,
    spread_evenly,
    temporal_segments,
)
from vlmzip.stages import VisualItem

QWEN = [family for family in FAMILIES if family.startswith("qwen")]


def _video(frames: list[int], per_frame: int = 6, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """Token features ``[len(frames) * per_frame, dim]``: frames of one scene (same number) share a direction."""
    generator = torch.Generator().manual_seed(seed)
    scenes = torch.eye(dim)[: max(frames) + 1] * 4  # orthogonal
    noise = torch.randn(len(frames), per_frame, dim, generator=generator) * 0.3
    return (scenes[frames][:, None, :] + noise).flatten(0, 1)


# -- the pure helpers ----------------------------------------------------------------------------------------
def test_temporal_segments_cut_where_the_scene_changes():
    frames = _video([0, 0, 0, 1, 1, 2, 2, 2], per_frame=1)
    assert temporal_segments(frames, 1, 0.5).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert temporal_segments(frames, 1, -1.0).tolist() == [0] * 8  # no transition is below -1
    # at least `minimum` segments: the weakest transitions within a scene cut too
    assert temporal_segments(frames, 5, -1.0).unique().numel() == 5
    assert temporal_segments(frames, 3, -1.0).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert temporal_segments(frames[:1], 8, 0.9).tolist() == [0]  # one frame: one segment
    same = torch.ones(4, 3)
    assert temporal_segments(same, 2, 0.9).tolist() == [0, 1, 1, 1]  # ties: the earlier transition


def test_budget_splits_are_exact():
    assert split_proportionally(10, torch.tensor([1, 1, 2])).tolist() == [3, 2, 5]  # 2.5, 2.5, 5: the earlier
    assert split_proportionally(7, torch.tensor([4, 0, 3])).tolist() == [4, 0, 3]
    for total in range(0, 31):
        counts = split_proportionally(total, torch.tensor([3, 1, 5, 1]))
        assert counts.sum() == total and bool((counts <= torch.tensor([3, 1, 5, 1]) * 3).all())
    assert spread_evenly(torch.tensor([4, 2]), torch.tensor([0, 0, 0, 1, 1])).tolist() == [2, 1, 1, 1, 1]


def test_grouped_density_peaks_equal_each_group_alone():
    points = torch.randn(30, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    groups = torch.tensor([0] * 8 + [-1] * 4 + [2] * 10 + [1] * 8)
    counts = torch.tensor([3, 0, 4])
    expected = []
    for group, count in enumerate(counts.tolist()):
        members = (groups == group).nonzero().flatten()
        if count:
            expected += members[density_peaks(points[members], count, 4)[0]].tolist()
    assert grouped_density_peaks(points, groups, counts, 4).tolist() == sorted(expected)
    assert grouped_density_peaks(points, groups, torch.zeros(3, dtype=torch.long), 4).numel() == 0


def test_preferred_groups_widen_where_the_preferred_are_too_few():
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    allowed = torch.tensor([True, True, False, True, True, True])
    preferred = torch.tensor([True, False, False, True, True, False])
    assert preferred_groups(groups, allowed, preferred, torch.tensor([2, 2])).tolist() == [0, 0, -1, 1, 1, -1]


def test_join_nearest_within_groups():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.95, 0.05], [0.1, 0.9]])
    groups = torch.tensor([0, 1, 1, 0, 2])
    sources = join_nearest(features, torch.tensor([0, 1]), torch.tensor([0, 1]), groups)
    assert sources.tolist() == [0, 1, 1, 0, -1]  # token 2 is nearer token 0 but in token 1's group; 4: none


# -- the method on a hand-made item --------------------------------------------------------------------------
def _item(scenes: list[int], per_frame: int = 6) -> VisualItem:
    features = _video(scenes, per_frame)
    attention = torch.rand(len(features), generator=torch.Generator().manual_seed(2))
    item = VisualItem(0, 0, "video", torch.arange(len(features)), (len(scenes), 2, per_frame // 2), features=features)
    item.signals["vision_attention"] = attention
    return item


def test_select_keeps_salient_tokens_and_merges_the_rest_into_anchor_frame_peaks():
    item = _item([0, 0, 0, 1, 1, 1])
    method = FastVID(keep=12, segments=1)  # two segments of 3 frames: 6 tokens each, 2 of them peaks
    selection = method.select(item)
    keep, sources = selection.keep, selection.sources
    assert len(keep) == 12 and len(selection.embeddings) == 12
    attention = item.signals["vision_attention"].view(6, 6)
    salient = set()
    for frame, quota in enumerate([2, 1, 1, 2, 1, 1]):  # 4 salient per segment, the earlier frame the extra one
        salient |= set((attention[frame].argsort(descending=True)[:quota] + 6 * frame).tolist())
    assert salient <= set(keep.tolist())
    peaks = sorted(set(keep.tolist()) - salient)
    assert [p // 6 for p in peaks] == [2, 2, 5, 5]  # the anchor frame of each segment: its last
    for segment, frame in enumerate((2, 5)):  # density peaks among the anchor frame's other tokens
        rest = torch.tensor([6 * frame + t for t in range(6) if 6 * frame + t not in salient])
        expected = rest[density_peaks(item.features[rest], 2, 4)[0]]
        assert peaks[2 * segment : 2 * segment + 2] == sorted(expected.tolist())
    for slot, token in enumerate(keep.tolist()):
        members = (sources == slot).nonzero().flatten()
        assert len({int(m) // 18 for m in members}) == 1  # a peak absorbs tokens of its own segment only
        own = item.features[token]
        expected = own if token in salient else 0.6 * own + 0.4 * item.features[members].mean(dim=0)
        torch.testing.assert_close(selection.embeddings[slot], expected)
    assert bool((sources >= 0).all())  # nothing dropped: every other token joined a peak


def test_select_exact_counts_for_any_budget_and_keep_all_is_the_identity():
    item = _item([0, 0, 1, 1, 1, 2, 3, 3], per_frame=4)
    for keep in [1, 2, 3, 5, 8, 13, 20, 31, 32]:
        for method in (
            FastVID(keep=keep),
            FastVID(keep=keep, anchor_every=8, contextual=1.0),
            FastVID(keep=keep, contextual=0.0),
        ):
            selection = method.select(item)
            assert len(selection.keep) == keep == len(torch.unique(selection.keep)), (keep, method)
    assert FastVID(keep=1.0).select(item).keep.tolist() == list(range(32))
    assert not FastVID(keep=1.0).select(item).merged


# -- through the runtime -------------------------------------------------------------------------------------
@pytest.mark.parametrize("qwen", QWEN)
def test_videos_exact_counts_and_a_batch_equals_each_sample_alone(qwen, backend):  # backend: conftest
    model = tiny_model(qwen, attn_implementation=backend)
    batch = random_inputs(model, [0, 0], text_lengths=[3, 7], video_frames=[8, 4])  # left-padded
    vlmzip.compress(model, "fastvid:keep=10,segments=2,tau=0.0")
    model(**batch)
    assert vlmzip.stats(model).visual_tokens_kept["vision"] == [10, 10]
    vlmzip.compress(model, "fastvid:keep=0.25")
    together = greedy(model, batch, 3)
    stats = vlmzip.stats(model)
    assert stats.visual_tokens_in == [64, 32] and stats.visual_tokens_kept["vision"] == [16, 8]
    for row, single in enumerate(split_batch(model, batch)):
        alone = greedy(model, single, 3)
        shift = batch["input_ids"].shape[1] - single["input_ids"].shape[1]
        positions = vlmzip.stats(model).visual_positions_kept["vision"][0]
        assert positions == [p - shift for p in stats.visual_positions_kept["vision"][row]]
        assert torch.equal(alone.sequences[0, -3:], together.sequences[row, -3:])
        worst = max((a[0] - b[row]).abs().max().item() for a, b in zip(alone.logits, together.logits))
        assert worst < 1e-4


def test_frames_given_as_images_are_one_video_per_sample(family, backend, monkeypatch):  # conftest: every one
    """A sample of two or more images of one size (and nothing else) is a frame list: one video of those frames,
    its tokens and tower signals in image order; a batch equals each sample alone."""
    model = tiny_model(family, attn_implementation=backend)
    batch = random_inputs(model, [3, 2], text_lengths=[5, 7], seed=1)
    if len({item.grid for item in adapter_for(model).visual_items(batch, [])}) > 1:
        pytest.skip(f"{family}'s images are views of several grids (anyres base and high-resolution), not frames")
    seen = []
    select = FastVID.select

    def spy(self, item):
        seen.append(item)
        return select(self, item)

    monkeypatch.setattr(FastVID, "select", spy)
    vlmzip.compress(model, "fastvid:keep=0.25")
    together = greedy(model, batch, 3)
    stats = vlmzip.stats(model)
    assert stats.visual_tokens_in == [48, 32] and stats.visual_tokens_kept["vision"] == [12, 8]
    for sample, item in enumerate(seen[:2]):
        assert (item.sample, item.kind, item.grid) == (sample, "video", (3 - sample, 4, 4))
        assert item.positions.tolist() == visual_mask(model, batch)[sample].nonzero().flatten().tolist()
        assert [frame.grid for frame in item.frames] == [(1, 4, 4)] * (3 - sample)
        assert torch.equal(
            item.signals["vision_attention"], torch.cat([f.signals["vision_attention"] for f in item.frames])
        )
    for row, single in enumerate(split_batch(model, batch)):
        alone = greedy(model, single, 3)
        assert torch.equal(alone.sequences[0, -3:], together.sequences[row, -3:])
    vlmzip.restore(model)


@pytest.mark.parametrize(
    ("name", "message"),
    [("qwen2_5_vl", "frames given as images are chosen after the vision tower"), ("llava", "use .* \\(fastvid\\)")],
)
def test_frames_given_as_images_are_not_chosen_inside_the_tower(name, message):
    model = tiny_model(name)
    vlmzip.compress(model, "evs:keep=0.5")
    with pytest.raises(vlmzip.UnsupportedModelError, match=message):
        model(**random_inputs(model, [2, 3], text_lengths=[5, 7]))
    vlmzip.restore(model)


# -- bad input -----------------------------------------------------------------------------------------------
def test_images_are_refused_naming_the_method_and_the_fix(family):  # every family: conftest
    model = tiny_model(family)
    vlmzip.compress(model, "fastvid:keep=0.25")
    with pytest.raises(InputError) as error:
        model.generate(**random_inputs(model, [1, 2], text_lengths=[3, 7]), max_new_tokens=2)
    assert isinstance(error.value, ValueError)
    words = ["fastvid prunes video inputs only", "sample 0 holds image input", "as a video", "two or more images"]
    assert all(word in str(error.value) for word in words), str(error.value)
    if family in QWEN:  # an image beside a video is refused too: keeping it whole would break keep's count
        mixed = random_inputs(model, [1, 0], text_lengths=[4, 6], video_frames=[4, 2])
        with pytest.raises(InputError, match="sample 0 holds image input"):
            model(**mixed)


@pytest.mark.parametrize(
    "policy, words",
    [
        ("fastvid:segments=0", ["segments=0", ">= 1"]),
        ("fastvid:anchor_every=0", ["anchor_every=0", ">= 1"]),
        ("fastvid:contextual=1.5", ["contextual=1.5", "[0, 1]"]),
        ("fastvid:beta=-0.1", ["beta=-0.1", "[0, 1]"]),
        ("fastvid:keep=0", ["keep=0"]),
    ],
)
def test_bad_parameters_name_the_problem(policy, words):
    with pytest.raises(PolicyError) as error:
        vlmzip.Policy.parse(policy)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_inside_the_tower_is_refused():
    model = tiny_model("llava")
    with pytest.raises(PolicyError, match="fastvid: merges tokens, which a choice inside the tower cannot do"):
        vlmzip.compress(model, "fastvid:keep=0.25,at_layer=1")
    assert vlmzip.policy_of(model) is None
