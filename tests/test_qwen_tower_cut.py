"""Pruning inside and before Qwen-VL's packed vision tower (``at_layer``, ``evs``): keep-all identity, exact counts,
the features the language model receives against the tower run by hand chunk by chunk on the kept patches, EVS's
choice against its formula, and refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

import vlmzip
from vlmzip.eval.families import tiny_models
from vlmzip.eval.tiny import random_inputs, tiny_model

QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


def _deep_tower(family: str, backend: str = "sdpa"):
    """A tiny Qwen model with a 4-layer tower (Qwen2.5-VL: full attention in layers 1 and 3, windows elsewhere)."""
    config = tiny_models()[family].config()
    config.vision_config.depth = 4
    if family == "qwen2_5_vl":
        config.vision_config.fullatt_block_indexes = [1, 3]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config, attn_implementation=backend, dtype=torch.float32)
    model.generation_config = tiny_model(family).generation_config
    return model.eval()


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("qwen", QWEN)
def test_keeping_everything_inside_or_before_the_tower_changes_nothing(qwen, attention):
    model = _deep_tower(qwen, attention)
    mixed = random_inputs(model, [1, 0], video_frames=[2, 4], seed=1)
    videos = random_inputs(model, [0, 0], video_frames=[4, 6], seed=2)
    expected = {"mixed": _logits(model, mixed), "videos": _logits(model, videos)}
    for policy, inputs in [
        ("uniform:keep=1.0,at_layer=2", "mixed"),
        ("vtc-cls:keep=1.0,at_layer=1,layers=1", "mixed"),
        ("evs:keep=1.0", "videos"),
        ("evs:keep=1.0,at_layer=2", "videos"),
    ]:
        vlmzip.compress(model, policy=policy)
        assert torch.equal(_logits(model, mixed if inputs == "mixed" else videos), expected[inputs]), policy
        vlmzip.restore(model)


@pytest.mark.parametrize("qwen", QWEN)
def test_counts_and_generate_with_images_and_videos_at_batch_size_two(qwen):
    model = _deep_tower(qwen)
    inputs = random_inputs(model, [1, 2], video_frames=[4, 2], seed=3)
    tokens = 16  # a tiny Qwen image or temporal step: 4 x 4 tokens
    for policy, kept in [
        ("vtc-cls:keep=0.25,at_layer=2,layers=2", [4 + 8, 2 * 4 + 4]),
        ("uniform:keep=3,at_layer=1", [3 + 3, 2 * 3 + 3]),
    ]:
        vlmzip.compress(model, policy=policy)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        stats = vlmzip.stats(model)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 3
        assert stats.visual_tokens_in == [tokens + 2 * tokens, 2 * tokens + tokens], policy
        assert stats.visual_tokens_kept["vision"] == kept, policy
        vlmzip.restore(model)


@pytest.mark.parametrize("qwen", QWEN)
def test_a_pruned_batch_equals_each_sample_alone(qwen):
    model = _deep_tower(qwen)
    inputs = random_inputs(model, [0, 0], text_lengths=[5, 9], video_frames=[4, 6], seed=4)
    vlmzip.compress(model, policy="evs:keep=0.3,at_layer=1")
    batch = _logits(model, inputs)[:, -1]
    for sample, (start, stop) in enumerate(_video_rows(inputs)):
        alone = _one_sample(inputs, sample, start, stop)
        torch.testing.assert_close(_logits(model, alone)[0, -1], batch[sample], rtol=1e-4, atol=1e-5)
    vlmzip.restore(model)


def _video_rows(inputs) -> list[tuple[int, int]]:
    sizes = inputs["video_grid_thw"].prod(dim=-1).tolist()
    bounds = torch.tensor([0, *sizes]).cumsum(dim=0).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def _one_sample(inputs, sample: int, start: int, stop: int) -> dict:
    valid = inputs["attention_mask"][sample].bool()
    alone = {}
    for key, value in inputs.items():
        if key == "pixel_values_videos":
            alone[key] = value[start:stop]
        elif key in ("video_grid_thw", "second_per_grid_ts"):
            alone[key] = value[sample : sample + 1]
        else:
            alone[key] = value[sample : sample + 1, valid]
    return alone


@pytest.mark.parametrize("qwen", ["qwen2_vl", "qwen2_5_vl"])
def test_features_equal_the_tower_run_by_hand_on_the_kept_patches(qwen):
    # 10 x 10 patches: 5 x 5 tokens per step, in 2 x 2-token windows (Qwen2.5-VL) with partial edge windows, and
    # 4 tokens per step leave some windows empty
    model = _deep_tower(qwen)
    inputs = random_inputs(model, [0], video_frames=[4], seed=5, qwen_patches=10)
    keep, at = 8, 2
    vlmzip.compress(model, policy=f"uniform:keep={keep},at_layer={at}")
    received = _language_model_inputs(model, inputs)
    vlmzip.restore(model)
    from vlmzip.methods.uniform import _evenly_spaced

    kept = _evenly_spaced(50, keep, (2, 5, 5))
    with torch.no_grad():
        expected = _by_hand(model, inputs["pixel_values_videos"], inputs["video_grid_thw"], kept, at)
    first = int((inputs["input_ids"][0] == model.config.video_token_id).nonzero()[0])
    torch.testing.assert_close(received[0, first : first + keep], expected, rtol=1e-5, atol=1e-6)


def _language_model_inputs(model, inputs) -> torch.Tensor:
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    _logits(model, inputs)
    hook.remove()
    return seen[0]


def _by_hand(model, pixels, grid_thw, kept: torch.Tensor, at: int) -> torch.Tensor:
    """The kept tokens' features: the tower's blocks called one attention chunk (window or frame) at a time, on
    every patch up to block ``at`` and on the kept tokens' patches from there, then the patch merger."""
    tower = model.model.visual
    unit, size = tower.spatial_merge_size**2, tower.spatial_merge_size
    hidden = tower.patch_embed(pixels)
    length = hidden.shape[0]
    full_bounds, _ = get_vision_attention_seqlens(grid_thw, tower.config)
    windows = getattr(tower, "window_size", None)
    if windows:
        order, window_bounds = get_vision_window_index(grid_thw, size, tower.window_size, tower.patch_size)
    else:
        order, window_bounds = torch.arange(length // unit), full_bounds
    hidden = hidden.view(-1, unit, hidden.shape[-1])[order].flatten(0, 1)
    cos, sin = tower.rotary_pos_emb(hidden, get_vision_position_ids(grid_thw, size))
    cos, sin = (t.view(-1, unit, t.shape[-1])[order].flatten(0, 1) for t in (cos, sin))
    chunk = {
        kind: _chunk_of_rows(bounds, length) for kind, bounds in (("full", full_bounds), ("window", window_bounds))
    }
    places = sorted(int((order == token).nonzero()) for token in kept)
    rows = torch.tensor([place * unit + i for place in places for i in range(unit)])
    full_layers = getattr(tower, "fullatt_block_indexes", range(len(tower.blocks)))
    for i, block in enumerate(tower.blocks):
        if i == at:
            hidden, cos, sin = hidden[rows], cos[rows], sin[rows]
            chunk = {kind: ids[rows] for kind, ids in chunk.items()}
        ids = chunk["full" if i in full_layers else "window"]
        out = torch.empty_like(hidden)
        for c in ids.unique():
            sel = (ids == c).nonzero().flatten()
            bounds = torch.tensor([0, len(sel)], dtype=torch.int32)
            out[sel] = block(
                hidden[sel], cu_seqlens=bounds, max_seqlen=len(sel), position_embeddings=(cos[sel], sin[sel])
            )
        hidden = out
    merged = tower.merger(hidden)  # kept tokens in the blocks' order
    return merged[order[places].argsort()]


def _chunk_of_rows(bounds: torch.Tensor, length: int) -> torch.Tensor:
    """The chunk each row belongs to, counted over the bounds that start at or before it."""
    starts = bounds[:-1].tolist()
    return torch.tensor([sum(start <= row for start in starts) - 1 for row in range(length)])


def test_evs_keeps_the_first_step_and_the_most_changed_tokens():
    model = _deep_tower("qwen2_5_vl")
    inputs = random_inputs(model, [0], video_frames=[6], seed=6)  # 3 temporal steps of 16 tokens
    pixels = inputs["pixel_values_videos"].view(3, 16, 4, -1).clone()
    pixels[1] = pixels[0]
    pixels[2] = pixels[1]
    changed = {(1, 3): 0.5, (1, 9): 2.0, (2, 0): 1.0, (2, 15): 0.1}  # (step, token): noise scale
    generator = torch.Generator().manual_seed(0)
    for (step, token), scale in changed.items():  # a change that stays: later steps equal this one there
        pixels[step:, token] += scale * torch.randn(pixels[step, token].shape, generator=generator)
    inputs["pixel_values_videos"] = pixels.flatten(0, 2)
    change = {
        key: 1 - F.cosine_similarity(pixels[key].flatten(), pixels[key[0] - 1, key[1]].flatten(), dim=0)
        for key in changed
    }
    ranked = sorted(changed, key=lambda key: -change[key])
    for policy, count in [("evs:keep=19", 19), ("evs:keep=0.5,threshold=0.001", 16 + 4), ("evs:keep=1", 16)]:
        vlmzip.compress(model, policy=policy)
        _logits(model, inputs)
        kept = vlmzip.stats(model).visual_positions_kept["vision"][0]
        vlmzip.restore(model)
        first = int((inputs["input_ids"][0] == model.config.video_token_id).nonzero()[0])
        expected = list(range(16)) + sorted(step * 16 + token for step, token in ranked[: count - 16])
        assert [p - first for p in kept] == expected, policy


@pytest.mark.parametrize(
    ("qwen", "policy", "inputs", "error", "message"),
    [
        ("qwen2_5_vl", "evs:keep=0.5", "image", vlmzip.InputError, "evs prunes video inputs only"),
        ("qwen2_5_vl", "uniform:keep=4,at_layer=4", None, vlmzip.PolicyError, r"at_layer=4 is not inside .* 1\.\.3"),
        ("qwen2_5_vl", "evs:threshold=3.0", None, vlmzip.PolicyError, r"threshold=3\.0 must be in \[0, 2\]"),
        ("qwen2_5_vl", "visionzip:keep=0.5,at_layer=1", "video", vlmzip.UnsupportedModelError, "merges tokens"),
    ],
)
def test_refusals_name_the_problem(qwen, policy, inputs, error, message):
    model = _deep_tower(qwen)
    try:
        with pytest.raises(error, match=message):
            vlmzip.compress(model, policy=policy)
            _logits(
                model, random_inputs(model, [1]) if inputs == "image" else random_inputs(model, [0], video_frames=[4])
            )
    finally:
        if vlmzip.policy_of(model) is not None:
            vlmzip.restore(model)
