"""PyramidDrop, DART, ZipVL and MustDrop (and FastV's layers): kept counts per layer, each choice against a
plain reference computed from the unwrapped eager model, and bad parameters."""

from __future__ import annotations

import pytest
import torch
from conftest import greedy
from torch.nn import functional as F

import vlmzip
from vlmzip.eval.tiny import random_inputs, tiny_model, visual_mask, visual_token_count


def _visual(model, inputs) -> torch.Tensor:
    return visual_mask(model, inputs)


def _eager(family, inputs, **outputs):
    with torch.no_grad():
        return tiny_model(family, attn_implementation="eager")(**inputs, **outputs)


def _top(scores: torch.Tensor, candidates: torch.Tensor, count: int) -> list[int]:
    ranked = torch.where(candidates, scores.float(), float("-inf")).argsort(descending=True, stable=True)
    return sorted(ranked[: min(count, int(candidates.sum()))].tolist())


def _kept(model, inputs, policy: str) -> list[int]:
    vlmzip.compress(model, policy)
    with torch.no_grad():
        model(**inputs)
    return vlmzip.stats(model).visual_positions_kept["prefill"][0]


# -- kept counts, layer by layer -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "by_layer"),
    [
        ("fastv:layer=2,keep=0.25", lambda n: [n, n, n // 4, n // 4]),
        ("pyramiddrop", lambda n: [n, n // 2, n // 4, n // 8]),  # 8/16/24 of 32 -> 1/2/3 of 4, half each time
        ("pyramiddrop:keep=3", lambda n: [n, round(n * (3 / n) ** (1 / 3)), round(n * (3 / n) ** (2 / 3)), 3]),
        ("pyramiddrop:layers=8/24,keep=0.25", lambda n: [n, n // 2, n // 2, n // 4]),
        ("dart:keep=0.25", lambda n: [n, n, n // 4, n // 4]),
        ("mustdrop:global_threshold=0,individual_threshold=0,keep=0.5", lambda n: [n, n // 2, n // 2, n // 2]),
    ],
)
def test_each_layer_processes_the_scheduled_visual_tokens(model, batch, policy, by_layer):
    vlmzip.compress(model, policy)
    out = greedy(model, batch)
    stats = vlmzip.stats(model)
    expected = [by_layer(n) for n in visual_token_count(model, batch)]  # per sample, per layer
    assert stats.visual_tokens_by_layer == [list(layer) for layer in zip(*expected)]
    assert stats.equivalent_visual_tokens() == [sum(layers) / 4 for layers in expected]
    for index, layer in enumerate(out.cache.layers):
        if not layer.is_sliding:
            assert (layer.valid & layer.visual).sum(dim=1).tolist() == stats.visual_tokens_by_layer[index]


@pytest.mark.parametrize("policy", ["pyramiddrop:keep=0.25", "dart:keep=0.25", "zipvl:tau=0.9", "mustdrop:keep=0.5"])
def test_pruned_batch_equals_each_sample_alone(family, policy):
    from test_invariants import test_pruned_batch_equals_each_sample_alone as check

    check(tiny_model(family), policy)


# -- each choice against a reference ---------------------------------------------------------------------------
def test_pyramiddrop_ranks_by_the_last_tokens_attention_at_each_boundary(family, backend):
    model = tiny_model(family, attn_implementation=backend)
    inputs = random_inputs(model, [2], text_lengths=[6])
    attention = _eager(family, inputs, output_attentions=True).attentions[0][0, :, -1].mean(dim=0)
    visual = _visual(model, inputs)[0]
    # one boundary, at layer 8 of 32 = 1 of 4: scored by layer 0
    assert _kept(model, inputs, "pyramiddrop:layers=8,keep=0.25") == _top(attention, visual, int(visual.sum()) // 4)


def test_dart_keeps_the_pivots_and_the_tokens_least_like_them(family, backend):
    model = tiny_model(family, attn_implementation=backend)
    inputs = random_inputs(model, [2], text_lengths=[6])
    hidden = _eager(family, inputs, output_hidden_states=True).hidden_states[2][0].float()  # entering layer 2
    visual = _visual(model, inputs)[0]
    last_visual = int(visual.nonzero().max())
    instruction = ~visual & (torch.arange(len(visual)) > last_visual)
    norms = hidden.norm(dim=-1)
    pivots = _top(norms, visual, 4) + _top(norms, instruction, 4)
    unit = F.normalize(hidden, dim=-1)
    duplication = (unit @ unit[pivots].T).amax(dim=1)
    score = torch.where(torch.isin(torch.arange(len(visual)), torch.tensor(pivots[:4])), float("inf"), -duplication)
    assert _kept(model, inputs, "dart:keep=0.25") == _top(score, visual, int(visual.sum()) // 4)


def test_zipvl_keeps_the_fewest_tokens_holding_tau_of_the_probes_attention(family, backend):
    model = tiny_model(family, attn_implementation=backend)
    inputs = random_inputs(model, [2], text_lengths=[6])
    visual = _visual(model, inputs)[0]
    text = ~visual & inputs["attention_mask"][0].bool()
    probs = _eager(family, inputs, output_attentions=True).attentions[1][0].mean(dim=0)  # layer 1, [L, L]
    mass = probs[text].mean(dim=0)  # every text row probes (fewer than 64)
    share = torch.where(visual, mass, 0.0).sort(descending=True).values.cumsum(0)
    count = int((share < 0.9 * share[-1]).sum()) + 1
    assert 0 < count < int(visual.sum())
    assert _kept(model, inputs, "zipvl:tau=0.9,random_probes=0") == _top(mass, visual, count)


def test_mustdrop_keeps_what_passes_either_threshold(family, backend):
    model = tiny_model(family, attn_implementation=backend)
    inputs = random_inputs(model, [2], text_lengths=[6])
    visual = _visual(model, inputs)[0]
    instruction = ~visual & (torch.arange(len(visual)) > int(visual.nonzero().max()))
    probs = _eager(family, inputs, output_attentions=True).attentions[1][0].mean(dim=0)[instruction]  # layer 1
    total, peak = probs.sum(dim=0)[visual].sort().values, probs.amax(dim=0)[visual].sort().values
    global_threshold = float((total[-12] + total[-11]) / 2)  # 11 pass the global threshold
    individual_threshold = float((peak[-6] + peak[-5]) / 2)  # 5 pass the individual one
    passes = visual & ((probs.sum(dim=0) >= global_threshold) | (probs.amax(dim=0) >= individual_threshold))
    thresholds = f"global_threshold={global_threshold!r},individual_threshold={individual_threshold!r}"
    policy = f"mustdrop:layers=2,depth=4,{thresholds}"
    assert _kept(model, inputs, policy) == sorted(passes.nonzero().squeeze(1).tolist())


# -- bad parameters --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("pyramiddrop:layers=16/8", r"layers=16/8 must increase strictly"),
        ("pyramiddrop:layers=8/16/40", r"layers=8/16/40 must lie in 1\.\.31 for depth=32"),
        ("mustdrop:layers=2/6,depth=4", r"layers=2/6 must lie in 1\.\.3 for depth=4"),
        ("pyramiddrop:layers=8/x", r"pyramiddrop: layers='8/x' is not a valid"),
        ("zipvl:tau=0", r"zipvl: tau=0.0 must be in \(0, 1\]"),
        ("zipvl:tau=1.5", r"zipvl: tau=1.5 must be in \(0, 1\]"),
        ("dart:pivots=0", r"dart: pivots=0 must be >= 1"),
        ("mustdrop:global_threshold=-1", r"mustdrop: global_threshold and individual_threshold must be >= 0"),
        ("dart:layer=4", r"dart: layer=4 is beyond the language model's depth \(4 layers"),
    ],
)
def test_bad_parameters_are_rejected(policy, message):
    with pytest.raises(ValueError, match=message):
        vlmzip.compress(tiny_model("llava"), policy)


def test_schedules_round_trip_through_policy_strings():
    policy = vlmzip.Policy.parse("pyramiddrop:layers=2/6/15,keep=64")
    assert policy.prefill.layers == (2, 6, 15) and policy.prefill.keep == 64
    assert vlmzip.Policy.parse(str(policy)) == policy and "layers=2/6/15" in str(policy)
