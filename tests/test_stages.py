"""The stage contracts: methods written outside the package, overriding one step each, run on every family."""

from __future__ import annotations

import runpy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import greedy, max_logit_diff

import vlmzip
from vlmzip.eval.tiny import random_inputs, split_batch, tiny_model, visual_mask, visual_token_count
from vlmzip.selection import merge_rows, pack_left
from vlmzip.stages import (
    Cut,
    DecodeMethod,
    DenseKV,
    LayerEntries,
    OneCutMethod,
    PromptRows,
    StoredEntries,
    VisionMethod,
    VisualItem,
    VisualSelection,
)

EXAMPLE = Path(__file__).parents[1] / "examples" / "custom_method.py"


# -- methods defined here, outside the package ------------------------------------------------------------------
@vlmzip.register_method
@dataclass(frozen=True)
class FirstHalfMerged(VisionMethod):
    """Keeps the first half of each item's tokens; the last kept token carries the mean of every later one."""

    name = "test-first-half-merged"

    def select(self, item: VisualItem) -> VisualSelection:
        n = item.num_tokens
        keep = torch.arange(n // 2)
        sources = torch.arange(n).clamp(max=n // 2 - 1)
        return VisualSelection(keep, merge_rows(item.features, sources, n // 2), sources)


@vlmzip.register_method
@dataclass(frozen=True)
class TextMeanOnce(OneCutMethod):
    """One cut, scored by the mean attention of every text token."""

    name = "test-text-mean"

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        return rows.text


@vlmzip.register_method
@dataclass(frozen=True)
class AboveMean(OneCutMethod):
    """A data-dependent budget: each sample keeps its visual rows scoring above their mean (ZipVL-like)."""

    name = "test-above-mean"

    def budget(self, cut: Cut, rows: PromptRows, scores: torch.Tensor) -> list[int]:
        visual = torch.where(rows.visual, scores, 0.0)
        mean = visual.sum(dim=1, keepdim=True) / rows.visual.sum(dim=1, keepdim=True).clamp(min=1)
        return ((visual > mean) & rows.visual).sum(dim=1).clamp(min=1).tolist()


@vlmzip.register_method
@dataclass(frozen=True)
class CountingAttention(OneCutMethod):
    """Keeps everything, and counts the prompt-pass attention calls it runs itself."""

    name = "test-counting-attention"
    keep: float = 1.0
    calls: tuple = ()  # never set from a policy: the test passes a list to append to

    def attend(self, layer, base, module, query, key, value, attention_mask, **kwargs):
        self.calls[0].append((module.layer_idx, query.shape[2]))
        return base(module, query, key, value, attention_mask, **kwargs)


@vlmzip.register_method
@dataclass(frozen=True)
class MergedPairsKV(DecodeMethod):
    """Stores each pair of visual entries (first and second of a sample's, third and fourth, ...) as their mean,
    in the first one's place; reads the last prompt token's attention, to check it arrives with the entries."""

    name = "test-merged-pairs-kv"
    seen: tuple = ()

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        return rows.last

    def compress(self, entries: LayerEntries) -> StoredEntries:
        self.seen[0].append(entries)
        keys, values = entries.keys.clone(), entries.values.clone()
        keep = entries.valid.clone()
        for sample in range(keep.shape[0]):
            visual = (entries.visual[sample] & entries.valid[sample]).nonzero().flatten()
            first, second = visual[0::2][: len(visual) // 2], visual[1::2]
            for tensor in (keys, values):
                tensor[sample, :, first] = (tensor[sample, :, first] + tensor[sample, :, second]) / 2
            keep[sample, second] = False
        counts = keep.sum(dim=1).tolist()
        index, _ = pack_left(keep, max(counts))
        return StoredEntries(index, counts, DenseKV(keys, values).gather(index))


# -- the example -------------------------------------------------------------------------------------------------
def test_the_custom_method_example_runs_and_reports_exact_counts(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "kept after vision:  [8, 16]" in out  # pair-merge at 0.5: 16 and 32 tokens in
    assert "kept after prefill: [2, 4]" in out  # two cuts at 0.5
    assert "visual tokens per layer, per sample: [[8, 4, 2, 2], [16, 8, 4, 4]]" in out


# -- vision: merged tokens ---------------------------------------------------------------------------------------
def _language_model_inputs(model, inputs):
    """What the language model receives in a prompt pass (hooked after vlmzip's own cut)."""
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    return seen


def test_merged_vision_tokens_reach_the_language_model_in_the_survivors_places(family):
    model = tiny_model(family)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7])
    full = _language_model_inputs(model, batch)
    vlmzip.compress(model, "test-first-half-merged")
    cut = _language_model_inputs(model, batch)
    stats = vlmzip.stats(model)
    kept = stats.visual_positions_kept["vision"]
    assert stats.visual_tokens_kept["vision"] == [n // 2 for n in visual_token_count(model, batch)]
    visual = visual_mask(model, batch)
    text = batch["attention_mask"].bool() & ~visual
    # Qwen3-VL's DeepStack rows follow the visual positions in row-major order; merged like the tokens
    deepstack = "deepstack_visual_embeds" in full and full["deepstack_visual_embeds"] is not None
    if deepstack:
        before = dict(zip(map(tuple, visual.nonzero().tolist()), full["deepstack_visual_embeds"][0]))
        after = dict(zip([(b, c) for b in range(len(kept)) for c in kept[b]], cut["deepstack_visual_embeds"][0]))
    for item in vlmzip.registry.adapter_for(model).visual_items(batch, []):
        columns = sorted(text[item.sample].nonzero().flatten().tolist() + kept[item.sample])
        received = dict(zip(columns, cut["inputs_embeds"][item.sample, -len(columns) :]))  # packed, left-padded
        half = item.num_tokens // 2
        survivors = item.positions[:half].tolist()
        tokens = full["inputs_embeds"][item.sample, item.positions]
        torch.testing.assert_close(torch.stack([received[c] for c in survivors]), _first_half_merged(tokens))
        if deepstack:
            rows = torch.stack([before[item.sample, c] for c in item.positions.tolist()])
            got = torch.stack([after[item.sample, c] for c in survivors])
            torch.testing.assert_close(got, _first_half_merged(rows))


def _first_half_merged(rows: torch.Tensor) -> torch.Tensor:
    half = len(rows) // 2
    return torch.cat([rows[: half - 1], rows[half - 1 :].mean(dim=0, keepdim=True)])


def test_a_merge_that_keeps_original_embeddings_equals_plain_selection(family):
    @dataclass(frozen=True)
    class Unmerged(VisionMethod):
        name = "test-unmerged"

        def select(self, item):
            keep = torch.arange(0, item.num_tokens, 2)
            sources = torch.where(torch.arange(item.num_tokens) % 2 == 0, torch.arange(item.num_tokens) // 2, -1)
            return VisualSelection(keep, item.features[keep], sources)

    @dataclass(frozen=True)
    class Plain(VisionMethod):
        name = "test-plain"

        def select(self, item):
            return VisualSelection(torch.arange(0, item.num_tokens, 2))

    model = tiny_model(family)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7])
    vlmzip.compress(model, vlmzip.Policy(vision=Plain()))
    plain = greedy(model, batch)
    vlmzip.compress(model, vlmzip.Policy(vision=Unmerged()))
    merged = greedy(model, batch)
    assert torch.equal(plain.sequences, merged.sequences) and max_logit_diff(plain, merged) == 0


def test_a_malformed_selection_is_refused():
    with pytest.raises(ValueError, match="1-D integer tensor"):
        VisualSelection(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="one row per kept token"):
        VisualSelection(torch.tensor([0, 1]), torch.zeros(3, 4), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="give their embeddings too"):
        VisualSelection(torch.tensor([0]), sources=torch.tensor([0, 0]))


# -- prefill: query rows, per-sample budgets, attention --------------------------------------------------------
def test_text_query_rows_score_by_the_mean_attention_of_every_text_token(family, backend):
    model = tiny_model(family, attn_implementation=backend)
    inputs = random_inputs(model, [2], text_lengths=[6])
    reference = tiny_model(family, attn_implementation="eager")
    with torch.no_grad():
        attentions = reference(**inputs, output_attentions=True).attentions
    visual = visual_mask(model, inputs)[0]
    text = ~visual
    scores = attentions[1][0].mean(dim=0)[text].mean(dim=0)  # layer K - 1 = 1: head mean, then text mean
    vlmzip.compress(model, "test-text-mean:layer=2,keep=0.25")
    with torch.no_grad():
        model(**inputs)
    ranked = torch.where(visual, scores, torch.tensor(float("-inf"))).argsort(descending=True, stable=True)
    assert vlmzip.stats(model).visual_positions_kept["prefill"][0] == sorted(ranked[: int(visual.sum()) // 4].tolist())


def test_samples_of_one_batch_keep_their_own_data_dependent_budgets(family):
    model = tiny_model(family)
    batch = random_inputs(model, [1, 2, 1], text_lengths=[3, 7, 5])
    vlmzip.compress(model, "test-above-mean:layer=2")
    together = greedy(model, batch)
    stats = vlmzip.stats(model)
    kept = stats.visual_tokens_kept["prefill"]
    assert stats.visual_tokens_by_layer[2:] == [kept] * 2 and len(set(kept)) > 1
    for row, single in enumerate(split_batch(model, batch)):
        alone = greedy(model, single)
        assert vlmzip.stats(model).visual_tokens_kept["prefill"] == [kept[row]]
        assert torch.equal(alone.sequences[0, -5:], together.sequences[row, -5:])


def test_a_method_may_run_the_prompt_pass_attention_itself(family):
    model = tiny_model(family)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7])
    reference = greedy(model, batch)
    calls: list = []
    vlmzip.compress(model, vlmzip.Policy(prefill=CountingAttention(calls=(calls,))))
    out = greedy(model, batch)
    layers = model.config.get_text_config().num_hidden_layers
    assert [layer for layer, _ in calls] == list(range(layers))  # the prompt pass only, once per layer
    assert {length for _, length in calls} == {batch["input_ids"].shape[1]}
    assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) < 1e-5


def test_a_schedule_must_cut_at_increasing_layers():
    @dataclass(frozen=True)
    class Backwards(OneCutMethod):
        name = "test-backwards"

        def schedule(self, info):
            return (Cut(3, 0.5, 2), Cut(2, 0.5, 1))

    with pytest.raises(ValueError, match="increasing layers"):
        vlmzip.compress(tiny_model("llava"), vlmzip.Policy(prefill=Backwards()))


# -- decode: merged entries, attention statistics, re-compression ------------------------------------------------
def test_a_decode_method_stores_merged_entries_and_reads_prompt_attention(family):
    model = tiny_model(family)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7])
    with torch.no_grad():
        unwrapped = model(**batch, use_cache=True).cache
    seen: list = []
    vlmzip.compress(model, vlmzip.Policy(decode=MergedPairsKV(seen=(seen,))))
    with torch.no_grad():
        cache = model(**batch).cache
    stats = vlmzip.stats(model)
    visual_in = visual_token_count(model, batch)
    full = [i for i, layer in enumerate(cache.layers) if not layer.is_sliding]
    assert [entries.layer for entries in seen] == full
    for entries in seen:
        assert entries.attention.shape == entries.valid.shape
        torch.testing.assert_close(entries.attention.sum(dim=1), torch.ones(len(visual_in)))
    visual = visual_mask(model, batch)[0] & batch["attention_mask"][0].bool()
    for idx in full:
        layer = cache.layers[idx]
        assert stats.kv_visual_entries[idx] == [(n + 1) // 2 for n in visual_in]
        original = unwrapped.layers[idx].keys[0][:, visual]  # sample 0: one image, an even number of tokens
        stored = layer.keys[0][:, layer.visual[0]]
        torch.testing.assert_close(stored, (original[:, 0::2] + original[:, 1::2]) / 2)
    assert stats.kv_bytes == sum(layer.nbytes() for layer in cache.layers)


def test_a_decode_method_may_compress_again_during_generation():
    @dataclass(frozen=True)
    class EveryThirdStep(DecodeMethod):
        name = "test-every-third-step"

        def due(self, step):
            return step % 3 == 0

        def score(self, entries):
            return torch.zeros_like(entries.valid, dtype=torch.float)

    model = tiny_model("llava")
    batch = random_inputs(model, [2], text_lengths=[4])
    vlmzip.compress(model, vlmzip.Policy(decode=EveryThirdStep(keep=0.5)))
    model.generate(**batch, max_new_tokens=4, do_sample=False)  # forwards 0..3: compressed at 0 and 3
    assert vlmzip.stats(model).kv_visual_entries[0] == [8]  # 32 -> 16 -> 8


# -- the registry ------------------------------------------------------------------------------------------------
def test_a_taken_name_and_an_unknown_signal_are_refused():
    @dataclass(frozen=True)
    class Impostor(VisionMethod):
        name = "fastv"

    with pytest.raises(ValueError, match="'fastv' is already registered by vlmzip.methods.fastv.FastV"):
        vlmzip.register_method(Impostor)

    @dataclass(frozen=True)
    class Needy(VisionMethod):
        name = "test-needy"
        needs = frozenset({"depth_map"})

        def score(self, item):
            return torch.zeros(item.num_tokens)

    with pytest.raises(ValueError, match=r"needs unknown signal\(s\) \['depth_map'\]"):
        vlmzip.compress(tiny_model("llava"), vlmzip.Policy(vision=Needy()))


class Int8KV:
    """A toy quantized store (per-entry absmax int8): what a quantizing decode method hands the cache."""

    def __init__(self, keys, values, key_scale, value_scale, dtype) -> None:
        self.q, self.scales, self.dtype = (keys, values), (key_scale, value_scale), dtype

    @classmethod
    def encode(cls, keys: torch.Tensor, values: torch.Tensor) -> Int8KV:
        parts = []
        for tensor in (keys, values):
            scale = tensor.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127
            parts.append(((tensor / scale).round().to(torch.int8), scale.to(torch.float16)))
        return cls(parts[0][0], parts[1][0], parts[0][1], parts[1][1], keys.dtype)

    def read(self):
        return tuple((q.to(self.dtype) * s.to(self.dtype)) for q, s in zip(self.q, self.scales))

    def append(self, keys, values):
        new = Int8KV.encode(keys, values)
        return self._map(lambda old, add: torch.cat([old, add], dim=2), new)

    def gather(self, index):
        def take(tensor):
            return tensor.gather(2, index[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[3]))

        return self._map(lambda t, _: take(t))

    def select_batch(self, index):
        return self._map(lambda t, _: t.index_select(0, index))

    def repeat_batch(self, repeats):
        return self._map(lambda t, _: t.repeat_interleave(repeats, dim=0))

    def keep_last(self, count):
        return self._map(lambda t, _: t[:, :, -count:])

    @property
    def nbytes(self):
        return sum(t.nbytes for t in (*self.q, *self.scales))

    def _map(self, fn, other=None):
        pairs = zip((*self.q, *self.scales), (*other.q, *other.scales) if other else (None,) * 4)
        keys, values, key_scale, value_scale = (fn(a, b) for a, b in pairs)
        return Int8KV(keys, values, key_scale, value_scale, self.dtype)


@dataclass(frozen=True)
class Quantized(DecodeMethod):
    """Keeps every entry, stored in int8 from the prompt pass on (new entries are quantized as they come)."""

    name = "test-int8"

    def compress(self, entries: LayerEntries) -> StoredEntries:
        index = torch.arange(entries.valid.shape[1]).expand_as(entries.valid)
        return StoredEntries(index, entries.count, Int8KV.encode(entries.keys, entries.values))


def test_a_decode_method_may_store_a_quantized_form_and_bytes_are_counted_exactly(family):
    model = tiny_model(family)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7])
    reference = greedy(model, batch)
    vlmzip.compress(model, vlmzip.Policy(decode=Quantized()))
    out = greedy(model, batch)
    cache = out.cache
    stats = vlmzip.stats(model)
    for layer in cache.layers:
        heads, length, dim = layer.keys.shape[1:]
        batch_size = layer.keys.shape[0]
        if layer.is_sliding:
            assert isinstance(layer.store, DenseKV)
            assert layer.nbytes() == 2 * batch_size * heads * length * dim * layer.keys.element_size()
        else:  # int8 entries and one fp16 scale per entry, for keys and values
            assert isinstance(layer.store, Int8KV)
            assert layer.nbytes() == 2 * batch_size * heads * length * (dim + 2)
    assert stats.kv_bytes == sum(layer.nbytes() for layer in cache.layers)
    assert max_logit_diff(out, reference) < 0.05  # int8 keys and values change the logits a little
