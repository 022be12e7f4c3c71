"""The fast Qwen tower: under ``compress`` (any policy, ``none`` included) a Qwen-VL vision tower runs each layer's
chunks (frames, windows) in batched attention calls instead of one call per chunk, with outputs bit-identical to the
model's own on the CPU in fp32, composed with tower scoring, and gone after ``restore``."""

from __future__ import annotations

import pytest
import torch
from conftest import greedy, max_logit_diff
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_window_index

import vlmzip
from vlmzip.adapters.qwen_vl import QwenVLAdapter
from vlmzip.eval.tiny import random_inputs, tiny_model
from vlmzip.kernels.bench import tower_bench
from vlmzip.kernels.chunk_attention import chunk_attention, chunk_attention_loop, chunk_plan
from vlmzip.registry import adapter_for

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# one tower forward over items of several sizes, a 2- and a 3-step video among them: the tiny Qwen2.5-VL's windows
# (2x2 merged tokens) tile the 8x8 grid and leave edge windows of other lengths on the others
GRIDS = torch.tensor([[1, 8, 8], [2, 10, 6], [1, 6, 12], [3, 10, 10]])


def _pixels(model, grids: torch.Tensor) -> torch.Tensor:
    vision = model.config.vision_config
    width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    return torch.randn(int(grids.prod(dim=-1).sum()), width, generator=torch.Generator().manual_seed(1))


def _tower_outputs(model, pixels: torch.Tensor, grids: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor the tower returns (last hidden state, merged features, Qwen3-VL's DeepStack features)."""
    with torch.no_grad():
        out = model.model.visual(pixels, grid_thw=grids)
    tensors = [out.last_hidden_state, out.pooler_output]
    return tensors + list(getattr(out, "deepstack_features", None) or [])


def _chunk_lengths(model, grids: torch.Tensor) -> list[list[int]]:
    """Each tower block's chunk lengths, as the tower splits its sequence for that block."""
    vision = model.config.vision_config
    frames = get_vision_cu_seqlens(grids).diff().tolist()
    if model.config.model_type != "qwen2_5_vl":
        return [frames] * vision.depth
    _, windows = get_vision_window_index(grids, vision.spatial_merge_size, vision.window_size, vision.patch_size)
    windows = windows.diff().tolist()
    return [frames if i in vision.fullatt_block_indexes else windows for i in range(vision.depth)]


def _recording_sdpa(monkeypatch) -> list[tuple[int, ...]]:
    """Record the query shape of every sdpa attention call (the model's own and vlmzip's batched ones)."""
    sdpa, shapes = ALL_ATTENTION_FUNCTIONS["sdpa"], []

    def recording(module, query, *args, **kwargs):
        shapes.append(tuple(query.shape))
        return sdpa(module, query, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", recording)
    return shapes


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("tower", QWEN)
def test_the_tower_is_bit_identical_under_compress_and_after_restore(tower, attn):
    model = tiny_model(tower, attn_implementation=attn)
    pixels = _pixels(model, GRIDS)
    reference = _tower_outputs(model, pixels, GRIDS)
    vlmzip.compress(model, "none")
    assert "flash" in model.config.vision_config._attn_implementation  # the tower passes whole packed sequences
    fast = _tower_outputs(model, pixels, GRIDS)
    vlmzip.restore(model)
    assert model.config.vision_config._attn_implementation == attn
    after = _tower_outputs(model, pixels, GRIDS)
    assert len(fast) == len(reference) >= 2
    for a, b, c in zip(reference, fast, after, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("tower", QWEN)
def test_each_layer_makes_one_call_per_chunk_length(tower, monkeypatch):
    model = tiny_model(tower)
    pixels, heads = _pixels(model, GRIDS), model.config.vision_config.num_heads
    shapes = _recording_sdpa(monkeypatch)
    _tower_outputs(model, pixels, GRIDS)
    per_block = _chunk_lengths(model, GRIDS)
    assert len(shapes) == sum(len(lengths) for lengths in per_block)  # unwrapped: one call per chunk
    shapes.clear()
    vlmzip.compress(model, "none")
    _tower_outputs(model, pixels, GRIDS)
    expected = []
    for lengths in per_block:  # the chunks of each length in one call [n, H, L, D], shortest first
        expected += [(lengths.count(length), heads, length) for length in sorted(set(lengths))]
    assert [shape[:3] for shape in shapes] == expected
    assert len(shapes) < sum(len(lengths) for lengths in per_block)


# eager's batched path is held bit-exact by the tower test above; test_invariants runs `none` on every backend
@pytest.mark.parametrize(("tower", "attn"), [(tower, "sdpa") for tower in QWEN] + [("qwen2_5_vl", "eager")])
def test_keep_all_generate_is_identical(tower, attn):
    """Images and videos of several sizes per batch (edge windows included), left-padded: same tokens, same bits."""
    model = tiny_model(tower, attn_implementation=attn)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7], video_frames=[4, 2], qwen_patches=10)
    reference = greedy(model, batch)
    vlmzip.compress(model, "none")
    out = greedy(model, batch)
    assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) == 0


def _vision_scores(model, batch, policy: str, monkeypatch) -> tuple[list[torch.Tensor], torch.Tensor]:
    signals, original = [], QwenVLAdapter.vision_scores

    def spy(self, runs, items):
        original(self, runs, items)
        signals.extend(item.signals["vision_attention"] for item in items)

    with monkeypatch.context() as patch:
        patch.setattr(QwenVLAdapter, "vision_scores", spy)
        vlmzip.compress(model, policy)
        with torch.no_grad():
            logits = model(**batch).logits
        vlmzip.restore(model)
    return signals, logits


@pytest.mark.parametrize("tower", QWEN)
def test_scoring_wraps_the_batched_tower_and_scores_are_unchanged(tower, monkeypatch):
    """VTC-CLS reads every tower layer's attention: its wrapper runs the batched attention and scores the chunks
    exactly as it scores the model's per-chunk calls."""
    policy = "vtc-cls:keep=0.5,layers=2"
    model = tiny_model(tower)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7], video_frames=[4, 2], qwen_patches=10)
    shapes = _recording_sdpa(monkeypatch)
    fast, fast_logits = _vision_scores(model, batch, policy, monkeypatch)
    fast_calls = len(shapes)
    shapes.clear()
    with monkeypatch.context() as patch:
        patch.setattr(QwenVLAdapter, "packs_vision_chunks", False)  # the tower as before: one call per chunk
        slow, slow_logits = _vision_scores(model, batch, policy, monkeypatch)
    assert fast_calls < len(shapes)
    assert len(fast) == len(slow) == 5  # three images, two videos
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
    assert torch.equal(fast_logits, slow_logits)


def _flash_like(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """A user's flash-style backend: the whole packed sequence in one call, chunks in ``cu_seq_lens_q``."""
    _flash_like.calls += 1
    lengths = kwargs["cu_seq_lens_q"].diff().tolist()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    parts = [sdpa(q, k, v, scale=scaling) for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)))]
    return torch.cat(parts, dim=2).transpose(1, 2), None


@pytest.mark.parametrize("policy", ["none", "vtc-cls:keep=0.5,layers=2"])
def test_a_flash_backend_is_left_alone(policy, monkeypatch):
    name = "test_user_flash"
    monkeypatch.setitem(AttentionInterface._global_mapping, name, _flash_like)
    monkeypatch.setitem(AttentionMaskInterface._global_mapping, name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model = tiny_model("qwen2_5_vl")
    model.set_attn_implementation({"vision_config": name})
    _flash_like.calls = 0
    pixels = _pixels(model, GRIDS)
    reference = _tower_outputs(model, pixels, GRIDS)
    registered = set(AttentionInterface._global_mapping)
    vlmzip.compress(model, policy)
    implementation = model.config.vision_config._attn_implementation
    if policy == "none":  # nothing to wrap, nothing to batch: the user's backend as it is
        assert implementation == name and set(AttentionInterface._global_mapping) == registered
    else:  # the scoring wrapper around the user's own backend, one call per layer
        assert implementation.startswith("vlmzip") and implementation.endswith(name)
    _flash_like.calls = 0
    assert all(torch.equal(a, b) for a, b in zip(_tower_outputs(model, pixels, GRIDS), reference))
    assert _flash_like.calls == model.config.vision_config.depth
    vlmzip.restore(model)
    assert model.config.vision_config._attn_implementation == name


@pytest.mark.parametrize("policy", ["none", "vtc-cls:keep=0.5,layers=2+fastv:layer=2,keep=0.5"])
def test_restore_unregisters_the_tower_function(policy):
    model = tiny_model("qwen2_5_vl")
    text = model.config.get_text_config()._attn_implementation
    vlmzip.compress(model, policy)
    name = model.config.vision_config._attn_implementation
    assert name.startswith("vlmzip") and "flash" in name
    assert name in AttentionInterface._global_mapping and name in AttentionMaskInterface._global_mapping
    if policy == "none":
        assert model.config.get_text_config()._attn_implementation == text  # the language model is untouched
    vlmzip.restore(model)
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert model.config.get_text_config()._attn_implementation == text
    assert name not in AttentionInterface._global_mapping and name not in AttentionMaskInterface._global_mapping


def test_other_families_keep_their_tower_backend():
    """Only towers that pack chunks (Qwen-VL) get the batched function; ``none`` registers nothing elsewhere."""
    for family in ("llava", "gemma3"):
        model = tiny_model(family)
        assert not adapter_for(model).packs_vision_chunks
        vlmzip.compress(model, "none")
        assert model.config.vision_config._attn_implementation == "sdpa"


# -- the batched chunk attention itself ----------------------------------------------------------------------------
def _sdpa_attend(q, k, v, mask):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)


def _eager_attend(q, k, v, mask):
    weights = q @ k.transpose(2, 3) * 0.3
    if mask is not None:
        weights = weights + mask
    return (weights.softmax(dim=-1) @ v).transpose(1, 2).contiguous()


@pytest.mark.parametrize("lengths", [[16] * 6, [16, 8, 8, 4, 16, 8], [5, 1, 7, 7, 3], [40]])
@pytest.mark.parametrize(("attend", "contiguous"), [(_sdpa_attend, False), (_eager_attend, True)])
def test_chunk_attention_matches_the_per_chunk_loop(lengths, attend, contiguous):
    total, heads, dim = sum(lengths), 3, 8
    # [1, H, S, D] views of [S, H, D], as the tower passes them
    q, k, v = (torch.randn(total, heads, dim).transpose(0, 1)[None] for _ in range(3))
    bounds = torch.tensor([0, *lengths]).cumsum(0).int()
    expected = chunk_attention_loop(q, k, v, bounds, attend)
    plans = [chunk_plan(bounds), chunk_plan(bounds, total, max(lengths))]
    for plan in plans:
        grouped = chunk_attention(q, k, v, plan, attend, "grouped", contiguous=contiguous)
        assert grouped.shape == (1, total, heads, dim) and torch.equal(grouped, expected)
        for strategy in ("padded", "bucketed"):  # padding changes the reductions' shapes
            padded = chunk_attention(q, k, v, plan, attend, strategy, contiguous=contiguous)
            torch.testing.assert_close(padded, expected, rtol=0, atol=1e-6)
        if all(length & (length - 1) == 0 for length in lengths):  # powers of two: no padding, the grouped calls
            assert torch.equal(chunk_attention(q, k, v, plan, attend, "bucketed", contiguous=contiguous), expected)


def test_equal_chunks_are_planned_without_reading_the_bounds():
    """Told the length and the longest chunk (Qwen's towers compute it once per forward), a plan of equal chunks
    never reads ``cu_seqlens`` (no host sync): a meta tensor, which has no values, is enough."""
    plan = chunk_plan(torch.empty(5, device="meta", dtype=torch.int32), total=64, longest=16)
    assert plan.groups == ((16, 4, None),)


def test_plans_index_on_the_attention_device():
    """A tower may get ``grid_thw`` (so ``cu_seqlens``) on the CPU while it attends on a GPU."""
    plan = chunk_plan(torch.tensor([0, 4, 8, 10]), device="meta")
    assert [index.device.type for _, _, index in plan.groups] == ["meta", "meta"]
    assert plan.cu_seqlens.device.type == "meta"  # what the padded strategy indexes from


def test_chunk_attention_refuses_what_does_not_fit():
    q = torch.zeros(1, 2, 8, 4)
    plan = chunk_plan(torch.tensor([0, 4, 8]))
    with pytest.raises(ValueError, match="strategy 'flex'"):
        chunk_attention(q, q, q, plan, _sdpa_attend, "flex")
    with pytest.raises(ValueError, match="cover 8 positions but the sequence has 6"):
        chunk_attention(q[:, :, :6], q[:, :, :6], q[:, :, :6], plan, _sdpa_attend)


def test_the_tower_bench_runs():
    """``python -m vlmzip.kernels.bench tower`` on the GPU; here a tiny CPU run so the code cannot rot."""
    rows = tower_bench(frames=2, side=8, heads=2, dim=8, window=4, device="cpu", dtype=torch.float32, repeats=1)
    assert [row["path"] for row in rows[:4]] == ["loop", "grouped", "padded", "bucketed"] and len(rows) == 20
    assert all(row["same"] for row in rows if row["path"] == "grouped")
