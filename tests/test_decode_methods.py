"""The decode-stage methods SnapKV, LOOK-M, MustDrop's cache policy and the random baseline: exact counts,
keep-everything equality, each one's choice (and LOOK-M's merge) against its formula computed by hand, and their
parameter errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import batch_of_two, full_attention_layers, greedy, max_logit_diff

import vlmzip
from vlmzip.budget import kept_count
from vlmzip.eval.tiny import split_batch, tiny_model, visual_mask, visual_token_count
from vlmzip.runtime.cache import CompressedLayer

TINY = ("llava", "qwen2_5_vl", "gemma3")  # one family per attention layout: Llama, M-RoPE, sliding + bidirectional
NEW_TOKENS = 4
# each method at a setting that evicts: a fraction, a count, and the prefill stage's final set (a prefill
# schedule of three cuts on the tiny models, so earlier layers hold more than the last one)
EVICTING = ("snapkv:keep=3", "look-m:keep=0.25", "pyramiddrop+mustdrop-decode:from_layer=1", "random-kv:keep=0.5")
KEEP_ALL = ("snapkv:keep=1.0", "look-m:keep=1.0", "mustdrop-decode:from_layer=0", "random-kv:keep=1.0")


@pytest.fixture(params=TINY)
def tiny(request):
    return request.param


def test_keep_everything_equals_the_unwrapped_model(tiny, backend):
    model = tiny_model(tiny, attn_implementation=backend)
    batch = batch_of_two(model)
    reference = greedy(model, batch, NEW_TOKENS)
    for policy in KEEP_ALL:
        vlmzip.compress(model, policy)
        out = greedy(model, batch, NEW_TOKENS)
        assert torch.equal(out.sequences, reference.sequences), policy
        assert max_logit_diff(out, reference) < 1e-5, policy
    vlmzip.restore(model)


@pytest.mark.parametrize("policy", EVICTING)
def test_exact_counts_per_layer_and_generation_to_the_end(tiny, backend, policy):
    model = tiny_model(tiny, attn_implementation=backend)
    batch = batch_of_two(model)
    full = full_attention_layers(model)
    if len(full) < model.config.get_text_config().num_hidden_layers:  # what sliding layers hold untouched
        vlmzip.compress(model, "none")
        untouched = greedy(model, batch, NEW_TOKENS).cache
    vlmzip.compress(model, policy)
    out = greedy(model, batch, NEW_TOKENS)
    stats = vlmzip.stats(model)
    prompt = batch["input_ids"].shape[1]
    assert out.sequences.shape[1] == prompt + NEW_TOKENS
    assert out.cache.get_seq_length() == prompt + NEW_TOKENS - 1  # the last token is never fed back
    visual_in = visual_token_count(model, batch)
    text = (batch["attention_mask"].sum(dim=1) - torch.tensor(visual_in)).tolist()
    for index, layer in enumerate(out.cache.layers):
        visual = stats.kv_visual_entries[index]
        assert visual == (layer.valid & layer.visual).sum(dim=1).tolist()
        if index not in full:  # sliding-window layers are left alone
            assert visual == (untouched.layers[index].valid & untouched.layers[index].visual).sum(dim=1).tolist()
            continue
        assert [s - v for s, v in zip(stats.kv_entries[index], visual)] == [t + NEW_TOKENS - 1 for t in text]
        assert visual == _expected(policy, index, visual_in, stats)


def _expected(policy: str, layer: int, visual_in: list[int], stats) -> list[int]:
    if policy.startswith("snapkv"):
        return [min(3, n) for n in visual_in]
    if policy.startswith("look-m"):
        return [n // 4 for n in visual_in]  # merged entries count once, as the kept entry they went into
    if policy.startswith("random-kv"):
        return [kept_count(0.5, n) for n in visual_in]
    final = stats.visual_tokens_by_layer[-1]  # what the last layer of the prompt pass held
    return stats.visual_tokens_by_layer[layer] if layer < 1 else final


@pytest.mark.parametrize("policy", EVICTING)
def test_a_batch_equals_each_sample_alone(tiny, policy):
    model = tiny_model(tiny)
    batch = batch_of_two(model)
    vlmzip.compress(model, policy)
    together = greedy(model, batch, NEW_TOKENS)
    for row, single in enumerate(split_batch(model, batch)):
        alone = greedy(model, single, NEW_TOKENS)
        assert torch.equal(alone.sequences[0, -NEW_TOKENS:], together.sequences[row, -NEW_TOKENS:])


# -- each method's choice against its formula, on the eager model's attention weights -----------------------
def _reference(tiny: str, batch: dict):
    """The unwrapped eager model's attention weights ``[B, H, L, L]`` per layer, and its keys and values."""
    reference = tiny_model(tiny, attn_implementation="eager")
    with torch.no_grad():
        out = reference(**batch, output_attentions=True, use_cache=True)
    return out.attentions, out.cache


def _compressed_cache(model, batch: dict, policy: str):
    vlmzip.compress(model, policy)
    with torch.no_grad():
        return model(**batch, use_cache=True).cache


def _top_visual(scores: torch.Tensor, candidates: torch.Tensor, count: int) -> list[int]:
    """Columns of the ``count`` highest scores among ``candidates``, ascending (ties: the earlier column)."""
    ranked = torch.where(candidates, scores, -torch.inf).argsort(descending=True, stable=True)
    return sorted(ranked[:count].tolist())


def _stored_visual(layer: CompressedLayer, sample: int) -> list[int]:
    return layer.positions[sample][layer.visual[sample] & layer.valid[sample]].tolist()


def test_snapkv_keeps_what_the_observation_window_attends_to_most_pooled(tiny):
    model = tiny_model(tiny)
    batch = batch_of_two(model)
    attentions, _ = _reference(tiny, batch)
    window, kernel, keep = 4, 3, 5
    cache = _compressed_cache(model, batch, f"snapkv:window={window},kernel={kernel},keep={keep}")
    valid = batch["attention_mask"].bool()
    visual = visual_mask(model, batch) & valid
    for layer in full_attention_layers(model):
        for sample in range(len(valid)):
            rows = valid[sample].nonzero().flatten()[-window:]  # the observation window: the last prompt rows
            votes = attentions[layer][sample, :, rows, :].sum(dim=1).mean(dim=0)  # summed over it, head mean
            votes[rows] = 0.0  # the window's own keys are not scored: SnapKV keeps them
            pooled = F.max_pool1d(votes[None, None], kernel, stride=1, padding=kernel // 2)[0, 0]
            pooled[rows] = torch.inf
            expected = _top_visual(pooled, visual[sample], keep)
            assert _stored_visual(cache.layers[layer], sample) == expected, (layer, sample)


@pytest.mark.parametrize("merge", ["average", "pivotal", "weighted"])
def test_look_m_evicts_by_text_attention_and_merges_by_key_similarity(merge):
    model = tiny_model("llava")
    batch = batch_of_two(model)
    attentions, full = _reference("llava", batch)
    cache = _compressed_cache(model, batch, f"look-m:keep=0.25,merge={merge}")
    valid = batch["attention_mask"].bool()
    visual = visual_mask(model, batch) & valid
    layer = 2
    stored_keys, stored_values = cache.layers[layer].store.read()
    for sample in range(len(valid)):
        text = (valid[sample] & ~visual[sample]).nonzero().flatten()
        scores = attentions[layer][sample, :, text, :].mean(dim=(0, 1))  # text rows' attention, head mean
        kept_visual = _top_visual(scores, visual[sample], int(visual[sample].sum()) // 4)
        assert _stored_visual(cache.layers[layer], sample) == kept_visual
        kept = sorted(kept_visual + text.tolist())
        evicted = sorted(set(visual[sample].nonzero().flatten().tolist()) - set(kept_visual))
        keys, values = full.layers[layer].keys[sample], full.layers[layer].values[sample]
        stored = cache.layers[layer].valid[sample]
        merged_keys, merged_values = _merge_by_hand(keys, values, kept, evicted, merge)
        torch.testing.assert_close(stored_keys[sample][:, stored], merged_keys)
        torch.testing.assert_close(stored_values[sample][:, stored], merged_values)


def _merge_by_hand(keys, values, kept: list[int], evicted: list[int], merge: str):
    """LOOK-M's merge for one sample, head by head: each evicted entry joins the kept entry of most similar key;
    a kept entry becomes the mean of itself and its joiners (as they are, midpoints, or similarity-scaled)."""
    out_keys, out_values = keys[:, kept].clone(), values[:, kept].clone()
    for head in range(keys.shape[0]):
        groups: dict[int, list[tuple[int, float]]] = {j: [] for j in range(len(kept))}
        for e in evicted:
            similarity = F.cosine_similarity(keys[head, e][None], keys[head, kept], dim=-1)
            groups[int(similarity.argmax())].append((e, float(similarity.max())))
        for j, joiners in groups.items():
            for source, target in ((keys, out_keys), (values, out_values)):
                own = source[head, kept[j]]
                parts = [own]
                for e, similarity in joiners:
                    if merge == "average":
                        parts.append(source[head, e])
                    elif merge == "pivotal":
                        parts.append((source[head, e] + own) / 2)
                    else:
                        parts.append(source[head, e] * similarity)
                target[head, j] = torch.stack(parts).mean(dim=0)
    return out_keys, out_values


def test_look_m_generation_reads_the_merged_store(monkeypatch):
    model = tiny_model("llava")
    batch = batch_of_two(model)
    with torch.no_grad():
        original = model(**batch, use_cache=True).cache.layers[1].keys  # unwrapped: every entry, none merged
    cache = _compressed_cache(model, batch, "look-m:keep=0.25")
    layer = cache.layers[1]
    merged_keys, merged_values = layer.store.read()
    columns = layer.positions[:, None, :, None].expand(-1, original.shape[1], -1, original.shape[3])
    unmerged = original.gather(2, columns)  # the kept entries as they were
    assert not torch.allclose(merged_keys[:, :, layer.valid[0]][0], unmerged[:, :, layer.valid[0]][0])
    read = []
    update = CompressedLayer.update

    def spy(self, *args, **kwargs):
        out = update(self, *args, **kwargs)
        if self is layer:
            read.append(out)
        return out

    monkeypatch.setattr(CompressedLayer, "update", spy)
    token = torch.ones(len(batch["input_ids"]), 1, dtype=torch.long)
    with torch.no_grad():  # one decode step, as generate makes it
        model(input_ids=token, attention_mask=torch.cat([batch["attention_mask"], token], dim=1), cache=cache)
    (keys, values), width = read[0], merged_keys.shape[2]
    assert keys.shape[2] == width + 1  # the stored entries and the new token's
    assert torch.equal(keys[:, :, :width], merged_keys) and torch.equal(values[:, :, :width], merged_values)


def test_random_kv_keeps_the_seeded_draws_of_each_place_and_layer():
    model = tiny_model("llava")
    batch = batch_of_two(model)
    valid = batch["attention_mask"].bool()
    visual = visual_mask(model, batch) & valid
    chosen = {}
    for seed in (0, 1):
        cache = _compressed_cache(model, batch, f"random-kv:keep=0.25,seed={seed}")
        for layer in full_attention_layers(model):
            draws = torch.rand(valid.shape[1], generator=torch.Generator().manual_seed(seed * 1_000_003 + layer))
            for sample in range(len(valid)):
                first = int(valid[sample].nonzero()[0])
                scores = torch.zeros(valid.shape[1])
                scores[first:] = draws[: valid.shape[1] - first]  # a column's draw is its place after padding
                expected = _top_visual(scores, visual[sample], kept_count(0.25, int(visual[sample].sum())))
                assert _stored_visual(cache.layers[layer], sample) == expected, (seed, layer, sample)
                chosen[seed, layer, sample] = expected
    assert chosen[0, 0, 0] != chosen[1, 0, 0] and chosen[0, 0, 0] != chosen[0, 1, 0]


def test_mustdrop_decode_cuts_earlier_layers_to_what_survived_the_prefill_stage(tiny):
    model = tiny_model(tiny)
    batch = batch_of_two(model)
    cache = _compressed_cache(model, batch, "pyramiddrop+mustdrop-decode:from_layer=1")
    stats = vlmzip.stats(model)
    final = stats.visual_positions_kept["prefill"]  # the prompt positions the last cut kept
    for layer in full_attention_layers(model):
        held = stats.visual_tokens_by_layer[layer]
        for sample in range(len(final)):
            stored = _stored_visual(cache.layers[layer], sample)
            if layer >= 1:
                assert stored == final[sample]
            else:  # before `from_layer`: every entry the layer processed
                assert len(stored) == held[sample]
    capped = _compressed_cache(model, batch, "pyramiddrop+mustdrop-decode:from_layer=0,keep=2")
    for layer in full_attention_layers(model):  # a cap keeps survivors only, at most `keep` of them
        for sample in range(len(final)):
            stored = _stored_visual(capped.layers[layer], sample)
            assert set(stored) <= set(final[sample]) and len(stored) == min(2, len(final[sample]))


# -- parameters --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy, message",
    [
        ("snapkv:window=0", r"snapkv: window=0 must be >= 1"),
        ("snapkv:kernel=4", r"snapkv: kernel=4 must be an odd number >= 1"),
        ("snapkv:pooling=avg", r"snapkv: unknown parameter 'pooling'"),
        ("look-m:merge=max", r"look-m: merge='max' must be one of average, pivotal, weighted"),
        ("look-m:keep=1.5", r"look-m.*keep"),
        ("mustdrop-decode:from_layer=-1", r"mustdrop-decode: from_layer=-1 must be >= 0"),
    ],
)
def test_bad_parameters_are_refused_naming_the_problem(policy, message):
    with pytest.raises(vlmzip.PolicyError, match=message):
        vlmzip.Policy.parse(policy)


def test_a_layer_beyond_the_depth_is_refused_at_compress():
    model = tiny_model("llava")
    with pytest.raises(ValueError, match=r"mustdrop-decode: from_layer=4 is beyond the language model's depth"):
        vlmzip.compress(model, "mustdrop-decode:from_layer=4")
    assert vlmzip.policy_of(model) is None
