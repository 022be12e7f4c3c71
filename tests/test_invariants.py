"""DESIGN.md's invariants, for every model family and attention backend, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from conftest import greedy, max_logit_diff

import vlmzip
from vlmzip.eval.families import tiny_models
from vlmzip.eval.tiny import random_inputs, split_batch, tiny_model, visual_token_count
from vlmzip.registry import adapter_for

# every method that keeps a budget of tokens, from the registry (the sparse-attention methods drop none: their own
# invariants are in test_sparse_prefill.py)
BUILTIN = [info for info in vlmzip.methods() if info.builtin and "keep" in info.params]
# the setting that keeps everything, where it is not keep=1.0 (there keep only caps a data-dependent count)
KEEPS_ALL_WITH = {
    "zipvl": "tau=1.0",
    "mustdrop": "global_threshold=0.0,individual_threshold=0.0",
    "mustdrop-vision": "threshold=2.0",
    "kivi": "residual=1024",  # the full-precision window holds the whole context: nothing is quantized
    "zipvl-kv": "residual=1024",
}
# what keep=0.25 leaves, where it is not a quarter of the visual tokens after the (last) cut
KEEP_IS = {
    "sparsevlm": "equivalent",
    "adaptinfer": "equivalent",
    "zipvl": "a cap",
    "mustdrop": "a cap",
    "mustdrop-vision": "a cap",
    "evs": "one frame at least",  # the first temporal step is kept whole: every later one is compared to it
    "kivi": "everything",  # quantization evicts nothing: run at a window that quantizes instead of keep=0.25
    "zipvl-kv": "everything",
}
QUANTIZING = "group_size=8,residual=8"  # what a method that keeps everything runs the quarter test with
FRAME = 16  # tokens per image or temporal step of a tiny model
KEEP_ALL = [
    "none",
    *(f"{info.name}:{KEEPS_ALL_WITH.get(info.name, 'keep=1.0')}" for info in BUILTIN),
    "fastv:layer=1,keep=1.0",
    "vtc-cls:keep=1.0+fastv:layer=2,keep=1.0+knorm:keep=1.0",
]
QUARTER = {info.name: info.stage for info in BUILTIN}  # method -> stage whose kept count keep=0.25 sets
NEW_TOKENS = 5
# the tiny families that take videos, from the family registry: those whose special ids name a video token
VIDEO = [name for name, tiny in tiny_models().items() if "video" in tiny.special_ids]
QWEN = [name for name in VIDEO if name.startswith("qwen")]  # videos of any frame count (2 frames: 16 tokens a step)


def _inputs_for(policy: str, family: str, model, batch: dict) -> dict:
    """The request a policy is checked on: ``batch`` (images), or for a vision method that prunes only videos (its
    ``media``) a left-padded batch of two videos, skipped on the families that take none."""
    vision = vlmzip.Policy.parse(policy).vision
    if vision is None or "image" in vision.media:
        return batch
    if family not in VIDEO:
        pytest.skip(f"{vision.name} prunes videos only and the {family} family takes none")
    if vision.tower_layer is not None and not adapter_for(model).model_info().tower_cut:
        pytest.skip(f"{vision.name} chooses inside the vision tower, which the {family} family refuses")
    # a OneVision batch's videos share a frame count (one pixel tensor)
    return random_inputs(model, [0, 0], text_lengths=[3, 7], video_frames=[4, 2] if family in QWEN else [4, 4])


@pytest.mark.parametrize("policy", KEEP_ALL)
def test_keep_everything_equals_the_unwrapped_model(family, model, batch, policy):
    batch = _inputs_for(policy, family, model, batch)
    for inputs in (split_batch(model, batch)[0], batch):  # batch of 1, and left-padded batch of 2
        reference = greedy(model, inputs)
        vlmzip.compress(model, policy)
        out = greedy(model, inputs)
        vlmzip.restore(model)
        assert torch.equal(out.sequences, reference.sequences)
        assert max_logit_diff(out, reference) < 1e-5


@pytest.mark.parametrize("method", list(QUARTER))
def test_quarter_keeps_exactly_a_quarter_and_every_text_token(family, model, batch, method):
    policy = f"{method}:{QUANTIZING}" if KEEP_IS.get(method) == "everything" else f"{method}:keep=0.25"
    batch = _inputs_for(policy, family, model, batch)
    vlmzip.compress(model, policy)
    out = greedy(model, batch, NEW_TOKENS)
    stats = vlmzip.stats(model)
    visual_in = visual_token_count(model, batch)
    expected = [n // 4 for n in visual_in]  # 16 tokens per image or frame pair
    if KEEP_IS.get(method) == "one frame at least":
        expected = [max(n, FRAME) for n in expected]
    elif KEEP_IS.get(method) == "everything":
        expected = visual_in
    assert stats.visual_tokens_in == visual_in
    assert out.sequences.shape[1] == batch["input_ids"].shape[1] + NEW_TOKENS

    stage = QUARTER[method]
    text = (batch["attention_mask"].sum(dim=1) - torch.tensor(visual_in)).tolist()
    cache = out.cache
    for index, layer in enumerate(cache.layers):
        stored = layer.valid.sum(dim=1).tolist()
        visual = (layer.valid & layer.visual).sum(dim=1).tolist()
        assert stored == stats.kv_entries[index] and visual == stats.kv_visual_entries[index]
        if layer.is_sliding:
            assert max(stored) <= layer.sliding_window - 1
            continue
        # every text token and every generated token (but the last, never fed back) is still cached
        assert [s - v for s, v in zip(stored, visual)] == [t + NEW_TOKENS - 1 for t in text]
        if stage == "prefill":  # the cache holds what each layer processed
            assert visual == stats.visual_tokens_by_layer[index]
        elif stage == "vision" and KEEP_IS.get(method) == "a cap":
            assert visual == stats.visual_tokens_kept[stage]
        else:
            assert visual == expected
    if stage == "prefill":
        assert stats.visual_tokens_by_layer[0] == visual_in
    if stage == "decode":
        return
    kept = stats.visual_tokens_kept[stage]
    if KEEP_IS.get(method) == "equivalent":
        assert [abs(e - n) <= 1 for e, n in zip(stats.equivalent_visual_tokens(), expected)] == [True, True]
    elif KEEP_IS.get(method) == "a cap":
        assert all(k <= n for k, n in zip(kept, expected))
    else:
        assert kept == expected
    for sample, positions in enumerate(stats.visual_positions_kept[stage]):
        ids = batch["input_ids"][sample, positions]
        assert len(positions) == kept[sample] and set(ids.tolist()) <= _visual_ids(model)


def _visual_ids(model) -> set[int]:
    return {getattr(model.config, name) for name in ("image_token_id", "video_token_id") if hasattr(model.config, name)}


@pytest.mark.parametrize(
    "policy",
    [
        "uniform:keep=0.25",
        "vtc-cls:keep=0.25",
        "fastv:layer=2,keep=0.25",
        "knorm:keep=0.25",
        "vtc-cls:keep=0.5+fastv:layer=1,keep=0.5+knorm:keep=0.5",
    ],
)
def test_pruned_batch_equals_each_sample_alone(model, policy):
    """Samples keep different numbers of tokens, so cutting re-pads the batch: padding must not leak."""
    batch = random_inputs(model, [1, 2, 0], text_lengths=[3, 7, 5])
    vlmzip.compress(model, policy)
    together = greedy(model, batch)
    for row, single in enumerate(split_batch(model, batch)):
        alone = greedy(model, single)
        assert torch.equal(alone.sequences[0, -NEW_TOKENS:], together.sequences[row, -NEW_TOKENS:])
        worst = max((a[0] - b[row]).abs().max().item() for a, b in zip(alone.logits, together.logits))
        assert worst < 1e-4


def _hooks(model) -> list:
    return [(name, list(m._forward_pre_hooks), list(m._forward_hooks)) for name, m in model.named_modules()]


def test_restore_brings_back_identical_outputs_and_compress_twice_does_not_stack(model, batch):
    reference = greedy(model, batch)
    hooks = _hooks(model)
    vlmzip.compress(model, "vtc-cls:keep=0.25+fastv:layer=2,keep=0.5+knorm:keep=0.5")
    vlmzip.compress(model, "fastv:layer=2,keep=0.25")  # replaces, does not stack
    greedy(model, batch)
    assert vlmzip.stats(model).visual_tokens_kept == {"prefill": [n // 4 for n in visual_token_count(model, batch)]}
    assert vlmzip.policy_of(model) == vlmzip.Policy.parse("fastv:layer=2,keep=0.25")
    vlmzip.restore(model)
    assert vlmzip.policy_of(model) is None
    assert _hooks(model) == hooks
    assert "vlmzip" not in str(model.config.get_text_config()._attn_implementation)
    out = greedy(model, batch)
    assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) == 0


def test_plain_forward_reports_stats(model, batch):
    vlmzip.compress(model, "uniform:keep=0.25")
    logits = model(**batch).logits
    stats = vlmzip.stats(model).as_dict()
    assert logits.shape[1] < batch["input_ids"].shape[1]  # the language model saw the shorter sequence
    assert stats["visual_tokens_kept"]["vision"] == [n // 4 for n in visual_token_count(model, batch)]
    assert stats["kv_bytes"] > 0 and len(stats["kv_entries"]) == model.config.get_text_config().num_hidden_layers


def test_prefill_layer_beyond_depth_is_rejected(family):
    model = tiny_model(family)
    with pytest.raises(ValueError, match=r"fastv: layer=4 is beyond the language model's depth \(4 layers"):
        vlmzip.compress(model, "fastv:layer=4")
    assert vlmzip.policy_of(model) is None


def test_placeholder_count_mismatch_is_rejected(family):
    model = tiny_model(family)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7])
    ids = batch["input_ids"].clone()
    row, col = (ids == model.config.image_token_id).nonzero()[0]
    ids[row, col] = 7  # one image placeholder too few
    vlmzip.compress(model, "uniform:keep=0.5")
    placeholders = int((ids == model.config.image_token_id).sum())  # 47 where every image is 16 tokens
    with pytest.raises(
        ValueError, match=f"the prompt has {placeholders} image placeholder tokens but the image inputs give 3 image"
    ):
        model(**{**batch, "input_ids": ids})


def test_beam_search(family):
    model = tiny_model(family)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7])
    reference = model.generate(**batch, max_new_tokens=4, num_beams=3, do_sample=False)
    vlmzip.compress(model, "vtc-cls:keep=1.0+fastv:layer=2,keep=1.0+knorm:keep=1.0")
    assert torch.equal(model.generate(**batch, max_new_tokens=4, num_beams=3, do_sample=False), reference)
    vlmzip.compress(model, "vtc-cls:keep=0.25+fastv:layer=2,keep=0.5+knorm:keep=0.5")
    model.generate(**batch, max_new_tokens=4, num_beams=3, do_sample=False)
    beams = vlmzip.stats(model).visual_positions_kept
    model.generate(**batch, max_new_tokens=4, do_sample=False)
    single = vlmzip.stats(model).visual_positions_kept
    for stage in ("vision", "prefill"):  # every beam of a prompt keeps what the prompt keeps alone
        assert beams[stage] == [positions for positions in single[stage] for _ in range(3)]


def test_manual_decode_loop_and_generate_without_cache(family):
    """A hand-written greedy loop (no position ids: the model derives them) equals generate's."""
    model = tiny_model(family)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7])

    def loop():
        out = model(**batch)
        logits, mask, cache = [out.logits[:, -1]], batch["attention_mask"], out.cache
        for _ in range(3):
            token = logits[-1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=mask, cache=cache)
            logits.append(out.logits[:, -1])
            cache = out.cache
        return logits

    reference = greedy(model, batch, 4)
    no_cache = model.generate(**batch, max_new_tokens=3, use_cache=False, do_sample=False)
    vlmzip.compress(model, "none")
    for got, expected in zip(loop(), reference.logits, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(model.generate(**batch, max_new_tokens=3, use_cache=False, do_sample=False), no_cache)
    vlmzip.compress(model, "vtc-cls:keep=0.25+fastv:layer=2,keep=0.5+knorm:keep=0.5")
    pruned = greedy(model, batch, 4)
    for got, expected in zip(loop(), pruned.logits, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    vlmzip.compress(model, "vtc-cls:keep=0.25")
    model.generate(**batch, max_new_tokens=3, use_cache=False, do_sample=False)
    assert vlmzip.stats(model).visual_tokens_kept["vision"] == [n // 4 for n in visual_token_count(model, batch)]


@pytest.mark.parametrize("qwen", QWEN)
@pytest.mark.parametrize(
    "policy", ["none", "vtc-cls:keep=1.0", "uniform:keep=1.0", "fastv:layer=3,keep=1.0", "knorm:keep=1.0"]
)
def test_videos_keep_everything_equals_the_unwrapped_model(qwen, policy):
    model = tiny_model(qwen)
    batch = random_inputs(model, [1, 0], text_lengths=[4, 6], video_frames=[4, 2])
    reference = greedy(model, batch)
    vlmzip.compress(model, policy)
    out = greedy(model, batch)
    assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) < 1e-5


@pytest.mark.parametrize("qwen", QWEN)
@pytest.mark.parametrize("policy", ["vtc-cls:keep=0.25", "uniform:keep=0.25", "fastv:layer=3,keep=0.25"])
def test_videos_and_images_pruned_per_item_and_batch_consistent(qwen, policy):
    model = tiny_model(qwen)
    batch = random_inputs(model, [1, 0, 2], text_lengths=[4, 6, 5], video_frames=[4, 2, 0])
    vlmzip.compress(model, policy)
    together = greedy(model, batch)
    stats = vlmzip.stats(model)
    stage = "prefill" if policy.startswith("fastv") else "vision"
    assert stats.visual_tokens_in == [48, 16, 32]  # a frame pair is 16 tokens; an image is 16
    assert stats.visual_tokens_kept[stage] == [12, 4, 8]
    for row, single in enumerate(split_batch(model, batch)):
        alone = greedy(model, single)
        assert torch.equal(alone.sequences[0, -NEW_TOKENS:], together.sequences[row, -NEW_TOKENS:])


def test_scoring_keeps_the_model_on_its_own_backend(family, monkeypatch):
    """FastV and VTC-CLS read attention without switching any attention module to eager."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = tiny_model(family, attn_implementation="sdpa")
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7])
    sdpa, calls = ALL_ATTENTION_FUNCTIONS["sdpa"], []

    def counting(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return sdpa(module, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", counting)
    reference = greedy(model, batch)
    expected = sorted(calls)
    calls.clear()
    vlmzip.compress(model, "vtc-cls:keep=1.0+fastv:layer=2,keep=1.0")
    assert "vlmzip" in model.config.get_text_config()._attn_implementation
    out = greedy(model, batch)
    if adapter_for(model).packs_vision_chunks:  # Qwen-VL's tower runs its chunks batched: fewer calls, same modules
        tower = {type(m).__name__ for m in adapter_for(model).vision_attention_modules()}
        assert set(calls) == set(expected) and 0 < calls.count(*tower) < expected.count(*tower)
        calls, expected = [c for c in calls if c not in tower], [c for c in expected if c not in tower]
    assert sorted(calls) == expected  # every attention call of both towers still ran sdpa
    assert torch.equal(out.sequences, reference.sequences)
