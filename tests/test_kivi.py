"""Quantized KV caches: the ``QuantizedKV`` store, KIVI, ZipVL's mixed precision, eviction then quantization, and
decode steps that read the packed cache directly (``kernels.decode_attention``), on every attention layout."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_of_two, full_attention_layers, greedy, max_logit_diff

import vlmzip
from vlmzip.eval.tiny import tiny_model, visual_mask, visual_token_count
from vlmzip.kernels import kv_quant as kq
from vlmzip.runtime.decode import DecodeStage
from vlmzip.selection import share_count
from vlmzip.stages import DenseKV, PackedPart, Quantization, QuantizedKV, quantized

TINY = ("llava", "qwen2_5_vl", "gemma3")  # Llama, M-RoPE, sliding + bidirectional layers
NEW_TOKENS = 5
# small groups and windows, so that the tiny prompts (40-50 entries) are mostly packed
KIVI = "kivi:group_size=8,residual=8"
ZIPVL = "zipvl-kv:group_size=8,residual=8,tau=0.6,probes=4,random_probes=0"
EVICT = "knorm:keep=0.5,bits=4,group_size=8,residual=4"


@pytest.fixture(params=TINY)
def tiny(request):
    return request.param


def _store_bytes(store) -> int:
    """What a store's tensors occupy, counted from their shapes with ``packed_nbytes``."""
    if isinstance(store, DenseKV):
        return store.keys.nbytes + store.values.nbytes
    total = store.full_keys.nbytes + store.full_values.nbytes
    for part in store.parts:
        for packed in (part.keys, part.values):
            total += kq.packed_nbytes(
                packed.shape, packed.bits, packed.group_size, packed.group_along, packed.dtype
            ).total
    return total


# -- the store ----------------------------------------------------------------------------------------------
def _random_kv(batch=2, heads=2, length=37, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, length, dim, generator=gen) for _ in range(2))


def test_the_store_packs_whole_groups_beyond_the_window_and_keeps_entry_order():
    keys, values = _random_kv(length=37)
    spec = Quantization(bits=4, group_size=8, residual=10)
    store = QuantizedKV.build(keys[:, :, :30], values[:, :, :30], spec)
    assert store.packed_length == 16 and store.full_keys.shape[2] == 14  # 30 - 10 = 20: two whole groups
    for step in range(30, 37):  # generation: one entry a step; the window's oldest group leaves at 10 + 8
        store = store.append(keys[:, :, step : step + 1], values[:, :, step : step + 1])
        assert store.packed_length + store.full_keys.shape[2] == step + 1
        assert store.full_keys.shape[2] < spec.residual + spec.group_size
    assert store.packed_length == 24 and len(store.parts) == 1
    read_keys, read_values = store.read()
    assert torch.equal(read_keys[:, :, 24:], keys[:, :, 24:])  # the window, exact
    scale = store.parts[0].keys.scale.repeat_interleave(8, dim=2)
    assert ((read_keys[:, :, :24] - keys[:, :, :24]).abs() <= scale / 2 + 1e-6).all()
    assert (read_values[:, :, :24] - values[:, :, :24]).abs().max() > 0  # values quantized too


def test_batch_operations_keep_last_gather_and_bytes():
    keys, values = _random_kv(batch=3, length=40)
    store = QuantizedKV.build(keys, values, Quantization(2, 8, 4))
    dense_keys, dense_values = store.read()
    index = torch.tensor([2, 0, 0])
    assert torch.equal(store.select_batch(index).read()[0], dense_keys[index])
    assert torch.equal(store.repeat_batch(2).read()[0], dense_keys.repeat_interleave(2, 0))
    for count in (3, 16, 12):  # in the window; on a group boundary (exact); inside a group (quantized again)
        kept = store.keep_last(count)
        assert kept.read()[0].shape[2] == count
        if count != 12:
            assert torch.equal(kept.read()[0], dense_keys[:, :, -count:])
    chosen = torch.tensor([[0, 5, 39], [1, 2, 3], [7, 8, 38]])
    gathered = store.gather(chosen).read()[0]
    assert torch.equal(gathered, torch.stack([dense_keys[b][:, chosen[b]] for b in range(3)]))  # all in the window
    assert store.nbytes == _store_bytes(store) == sum(store.byte_parts().values())
    parts = store.byte_parts()
    assert parts["full"] == 2 * 3 * 2 * 8 * 16 * 4 and parts["payload"] == 2 * 3 * 2 * 32 * 16 // 4


def test_attend_over_two_bit_widths_equals_dense_attention_over_the_read_back_cache():
    keys, values = _random_kv(length=24)
    low = PackedPart.quantize(keys[:, :, :8], values[:, :, :8], 2, 8)
    high = PackedPart.quantize(keys[:, :, 8:16], values[:, :, 8:16], 8, 8)
    store = QuantizedKV((low, high), keys[:, :, 16:], values[:, :, 16:], Quantization(8, 8, 8))
    query = torch.randn(2, 4, 1, 16)
    valid = torch.ones(2, 24, dtype=torch.bool)
    valid[0, :3] = valid[1, 20] = False
    read_keys, read_values = store.read()
    logits = query @ read_keys.repeat_interleave(2, 1).transpose(-1, -2) * 0.25
    probs = logits.masked_fill(~valid[:, None, None], float("-inf")).softmax(-1)
    expected = probs @ read_values.repeat_interleave(2, 1)
    torch.testing.assert_close(store.attend(query, 0.25, valid), expected, rtol=1e-5, atol=1e-6)
    assert QuantizedKV((), keys, values, Quantization(2, 8, 99)).attend(query, 0.25, valid) is None


# -- the methods in generation --------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", [KIVI, ZIPVL, EVICT])
def test_generation_runs_to_the_end_with_counts_and_bytes_exact(tiny, backend, policy):
    model = tiny_model(tiny, attn_implementation=backend)
    batch = batch_of_two(model)
    vlmzip.compress(model, policy)
    out = greedy(model, batch, NEW_TOKENS)
    stats = vlmzip.stats(model)
    prompt = batch["input_ids"].shape[1]
    assert out.sequences.shape[1] == prompt + NEW_TOKENS
    assert out.cache.get_seq_length() == prompt + NEW_TOKENS - 1  # the last token is never fed back
    visual_in = visual_token_count(model, batch)
    text = (batch["attention_mask"].sum(dim=1) - torch.tensor(visual_in)).tolist()
    full = full_attention_layers(model)
    for index, layer in enumerate(out.cache.layers):
        assert stats.kv_bytes_by_layer[index] == layer.store.byte_parts()
        assert sum(stats.kv_bytes_by_layer[index].values()) == _store_bytes(layer.store)
        if index not in full:  # sliding-window layers stay dense
            assert isinstance(layer.store, DenseKV)
            continue
        assert isinstance(layer.store, QuantizedKV) and layer.store.packed_length > 0
        visual = stats.kv_visual_entries[index]
        assert [s - v for s, v in zip(stats.kv_entries[index], visual)] == [t + NEW_TOKENS - 1 for t in text]
        assert visual == ([n // 2 for n in visual_in] if policy == EVICT else visual_in)
    assert stats.kv_bytes == sum(_store_bytes(layer.store) for layer in out.cache.layers)
    assert "payload" in str(stats)
    vlmzip.restore(model)


def test_8_bit_kivi_with_a_window_over_everything_equals_the_unwrapped_model_and_restore_is_exact(tiny, backend):
    model = tiny_model(tiny, attn_implementation=backend)
    batch = batch_of_two(model)
    reference = greedy(model, batch, NEW_TOKENS)
    vlmzip.compress(model, "kivi:bits=8,residual=1024")
    out = greedy(model, batch, NEW_TOKENS)
    assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) == 0
    full = full_attention_layers(model)
    assert all(layer.store.packed_length == 0 for i, layer in enumerate(out.cache.layers) if i in full)
    vlmzip.compress(model, ZIPVL)  # a run that quantizes, then restore
    greedy(model, batch, NEW_TOKENS)
    vlmzip.restore(model)
    assert model.config.get_text_config()._attn_implementation == backend
    out = greedy(model, batch, NEW_TOKENS)
    assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) == 0


@pytest.mark.parametrize("policy", [KIVI, ZIPVL])
def test_the_read_back_cache_is_within_half_a_scale_of_the_unquantized_one(tiny, policy):
    model = tiny_model(tiny)
    batch = batch_of_two(model)
    with torch.no_grad():
        original = model(**batch, use_cache=True).cache  # unwrapped: the keys and values quantization starts from
    vlmzip.compress(model, policy)
    with torch.no_grad():
        cache = model(**batch, use_cache=True).cache
    for index in full_attention_layers(model):
        layer, store = cache.layers[index], cache.layers[index].store
        read = store.read()
        start = 0
        bounds = []
        for part in store.parts:  # each element's bound: half its group's scale
            bounds.append((part.keys.scale.repeat_interleave(part.keys.group_size, 2) / 2,
                           part.values.scale.repeat_interleave(part.values.group_size, 3) / 2))  # fmt: skip
            start += part.length
        window = torch.zeros_like(read[0][:, :, start:])  # the full-precision window: exact
        for which, (got, reference) in enumerate(
            zip(read, (original.layers[index].keys, original.layers[index].values))
        ):
            expected = reference.gather(2, layer.positions[:, None, :, None].expand_as(got))  # by each entry's column
            bound = torch.cat([b[which] for b in bounds] + [window], dim=2)
            error = (got - expected).abs().masked_fill(~layer.valid[:, None, :, None], 0.0)
            assert (error <= bound + 1e-6).all(), (index, which)
            assert error.max() > 0


def test_zipvl_keeps_the_probes_most_attended_entries_at_high_bits(tiny):
    model = tiny_model(tiny)
    batch = batch_of_two(model)
    eager = tiny_model(tiny, attn_implementation="eager")
    with torch.no_grad():
        attentions = eager(**batch, output_attentions=True).attentions
    vlmzip.compress(model, ZIPVL)
    with torch.no_grad():
        cache = model(**batch, use_cache=True).cache
    valid = batch["attention_mask"].bool()
    text = valid & ~visual_mask(model, batch)
    probes = text & (text.flip(1).long().cumsum(1).flip(1) <= 4)  # the last 4 text rows
    width = valid.shape[1]
    packed = (width - 8) // 8 * 8
    for index in full_attention_layers(model):
        store = cache.layers[index].store
        heads = attentions[index].mean(dim=1)  # [B, L, L], head mean
        mass = torch.stack([heads[b][probes[b]].mean(dim=0) for b in range(len(valid))])
        scores = torch.where(valid, mass, 0.0)
        important = torch.zeros_like(valid)
        for b, count in enumerate(share_count(scores, 0.6).tolist()):
            important[b, scores[b].argsort(descending=True)[:count]] = True
        needed = int((important[:, :packed]).sum(dim=1).max())
        high_width = min(packed, -(-needed // 8) * 8)
        assert store.parts[-1].bits == 4 and store.parts[-1].length == high_width
        assert all(part.bits == 2 for part in store.parts[:-1])
        positions = cache.layers[index].positions
        high = positions[:, packed - high_width : packed]
        for b in range(len(valid)):  # the high part: the highest-scoring packed columns (padding last)
            ranked = torch.where(valid[b, :packed], scores[b, :packed], -1.0).argsort(descending=True, stable=True)
            assert sorted(high[b].tolist()) == sorted(ranked[:high_width].tolist()), (index, b)
            assert set(important[b, :packed].nonzero().flatten().tolist()) <= set(high[b].tolist())


def test_eviction_then_quantization_stores_what_eviction_alone_keeps(tiny):
    model = tiny_model(tiny)
    batch = batch_of_two(model)
    vlmzip.compress(model, "knorm:keep=0.5")
    with torch.no_grad():
        evicted = model(**batch, use_cache=True).cache
    vlmzip.compress(model, EVICT)
    with torch.no_grad():
        both = model(**batch, use_cache=True).cache
    for index in full_attention_layers(model):
        plain, quantized_layer = evicted.layers[index], both.layers[index]
        assert torch.equal(plain.positions[plain.valid], quantized_layer.positions[quantized_layer.valid])
        assert isinstance(quantized_layer.store, QuantizedKV) and quantized_layer.store.parts[0].bits == 4
        expected = QuantizedKV.build(*plain.store.read(), Quantization(4, 8, 4), plain.valid)  # by hand
        for got, wanted in zip(quantized_layer.store.read(), expected.read()):
            assert torch.equal(got, wanted)


@pytest.mark.parametrize("case", ["llava-sdpa", "qwen2_5_vl-eager", "gemma3-sdpa", "gemma3-eager"])
def test_decode_steps_read_the_packed_cache_and_match_dense_attention_over_it(case, monkeypatch):
    family, backend = case.split("-")
    model = tiny_model(family, attn_implementation=backend)
    batch = batch_of_two(model)
    calls = []
    kernel = quantized.decode_attention

    def spy(query, packed_key, *args, **kwargs):
        calls.append((query.shape[2], packed_key.shape[2], packed_key.bits))
        return kernel(query, packed_key, *args, **kwargs)

    monkeypatch.setattr(quantized, "decode_attention", spy)
    for policy in (KIVI, ZIPVL):
        calls.clear()
        vlmzip.compress(model, policy)
        packed = greedy(model, batch, NEW_TOKENS)
        full = full_attention_layers(model)
        parts = sum(len(packed.cache.layers[i].store.parts) for i in full)  # a call per packed part
        assert len(calls) == parts * (NEW_TOKENS - 1) and parts >= len(full)  # every decode step
        assert all(rows == 1 and length > 0 for rows, length, _ in calls)
        with monkeypatch.context() as patch:  # the same cache, read back dense by the model's own attention
            patch.setattr(DecodeStage, "reads_packed", property(lambda self: False))
            vlmzip.compress(model, policy)
            dense = greedy(model, batch, NEW_TOKENS)
        assert torch.equal(packed.sequences, dense.sequences)
        assert max_logit_diff(packed, dense) < 1e-5, policy
    vlmzip.restore(model)


def test_beams_and_repeated_samples_reorder_and_repeat_the_packed_cache():
    model = tiny_model("llava")
    batch = batch_of_two(model)
    vlmzip.compress(model, KIVI)
    out = model.generate(**batch, max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False)
    assert out.shape == (4, batch["input_ids"].shape[1] + 4)
    stats = vlmzip.stats(model)
    assert len(stats.kv_entries[0]) == 6 and stats.kv_bytes_by_kind()["payload"] > 0  # 2 prompts x 3 beams


# -- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy, message",
    [
        ("kivi:bits=3", r"kivi: bits=3 is not supported: use 2, 4 or 8"),
        ("kivi:bits=16", r"kivi: bits=16 is not supported"),
        ("kivi:group_size=6", r"kivi: group_size=6 must be a positive multiple of 4 at 2 bits"),
        ("kivi:residual=-1", r"kivi: residual=-1 must be >= 0"),
        ("kivi:keep=0.5", r"kivi: keep=0.5 is not supported: kivi quantizes every entry.*knorm:keep=0.5,bits=2"),
        ("knorm:keep=0.5,bits=5", r"knorm: bits=5 is not supported: use 2, 4 or 8 \(16 keeps the model's dtype\)"),
        ("zipvl-kv:bits=4,high=2", r"zipvl-kv: bits=4, high=2: use 2, 4 or 8 with high >= bits"),
        ("zipvl-kv:tau=0.0", r"zipvl-kv: tau=0.0 must be in \(0, 1\]"),
    ],
)
def test_bad_parameters_are_refused_naming_the_problem(policy, message):
    with pytest.raises(vlmzip.PolicyError, match=message):
        vlmzip.Policy.parse(policy)


@pytest.mark.parametrize(
    "policy, message",
    [
        ("kivi:bits=4,group_size=12", r"kivi: group_size=12 does not divide the head dimension 16"),
        ("snapkv:keep=0.5,bits=2,group_size=12", r"snapkv: group_size=12 does not divide the head dimension 16"),
        ("kivi:residual=2048", r"kivi: residual=2048 is longer than the model's context \(1024 positions\)"),
    ],
)
def test_settings_the_model_cannot_hold_are_refused_at_compress(policy, message):
    model = tiny_model("llava")
    with pytest.raises(ValueError, match=message):
        vlmzip.compress(model, policy)
    assert vlmzip.policy_of(model) is None
