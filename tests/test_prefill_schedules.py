"""SparseVLM and AdaptInfer: equivalent-token schedules counted exactly per layer and in the cache, each score and
SparseVLM's recycling against a plain reference computed from the unwrapped eager model, and bad parameters."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import greedy, max_logit_diff

import vlmzip
from vlmzip.eval.tiny import random_inputs, split_batch, tiny_model, visual_mask, visual_token_count
from vlmzip.methods.adaptinfer import AdaptInfer
from vlmzip.methods.sparsevlm import SparseVLM
from vlmzip.registry import adapter_for
from vlmzip.selection import density_peaks
from vlmzip.stages import ModelInfo, PromptRows, equivalent_budgets

NEW_TOKENS = 3


def _visual(model, inputs) -> torch.Tensor:
    return visual_mask(model, inputs)


def _target(keep, n: int) -> float:
    return min(keep, n) if isinstance(keep, int) else keep * n


# -- the published schedules on a 32-layer model -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "layers", "shape", "counts"),
    [
        (SparseVLM(keep=64), (2, 6, 15), (66, 30, 17), [72, 33, 19]),  # published [66, 30, 17]: 61.7 equivalent
        (SparseVLM(keep=0.25), (2, 6, 15), (303, 110, 36), [372, 135, 44]),  # 144 of 576: the 128 shape
        (SparseVLM(keep=192), (2, 6, 15), (300, 200, 110), [308, 205, 113]),
        (AdaptInfer(keep=64), (1, 10, 20), (133, 27, 3), [130, 26, 3]),
        (AdaptInfer(keep=128), (1, 10, 20), (290, 72, 18), [288, 71, 18]),
    ],
)
def test_published_schedules_keep_the_equivalent_tokens_on_32_layers(method, layers, shape, counts):
    cuts = method.schedule(ModelInfo(num_layers=32, vision_layers=24))
    assert [cut.layer for cut in cuts] == list(layers) and [cut.score_layer for cut in cuts] == [x - 1 for x in layers]
    assert cuts[0].shape == shape
    rows = PromptRows(None, None, None, visual_count=[576], visual_in=[576])  # budgets only read the counts
    assert [method.budget(cut, rows, None)[0] for cut in cuts] == counts
    widths = [b - a for a, b in zip(layers, (*layers[1:], 32))]
    by_layer = [576] * layers[0] + [count for count, width in zip(counts, widths) for _ in range(width)]
    assert abs(sum(by_layer) / 32 - _target(method.keep, 576)) < 0.5


# -- kept counts per layer, in the cache, and each sample of a batch alone --------------------------------------
@pytest.mark.parametrize("policy", ["sparsevlm:keep=0.5", "adaptinfer:keep=COUNT"])
def test_each_layer_processes_the_scheduled_tokens_and_a_batch_equals_each_sample_alone(model, policy):
    batch = random_inputs(model, [1, 2, 0], text_lengths=[3, 7, 5])  # left-padded; image counts differ
    # a count every sample can keep on average while layer 0 sees all of its tokens (10 for 16-token images)
    policy = policy.replace("COUNT", str(max(10, -(-max(visual_token_count(model, batch)) // 4) + 2)))
    method = vlmzip.Policy.parse(policy).methods()[0]
    vlmzip.compress(model, policy)
    together = greedy(model, batch, NEW_TOKENS)
    stats = vlmzip.stats(model)
    visual_in = visual_token_count(model, batch)
    cuts = method.schedule(adapter_for(model).model_info())
    assert [cut.layer for cut in cuts] == [1, 2, 3]  # 2/6/15 and 1/10/20 of 32 on 4 layers
    for sample, n in enumerate(visual_in):
        budgets = equivalent_budgets(cuts[0].shape, (1, 2, 3), 4, n, _target(method.keep, n)) if n else [0, 0, 0]
        assert [layer[sample] for layer in stats.visual_tokens_by_layer] == [n, *budgets]
        assert stats.equivalent_visual_tokens()[sample] == pytest.approx(_target(method.keep, n), abs=0.5)
        assert stats.visual_tokens_kept["prefill"][sample] == budgets[-1]
        positions = stats.visual_positions_kept["prefill"][sample]
        assert len(positions) == budgets[-1] and _visual(model, batch)[sample, positions].all()

    text = (batch["attention_mask"].sum(dim=1) - torch.tensor(visual_in)).tolist()
    for index, layer in enumerate(together.cache.layers):
        stored = layer.valid.sum(dim=1).tolist()
        visual = (layer.valid & layer.visual).sum(dim=1).tolist()
        if not layer.is_sliding:  # the cache holds what each layer processed, and every text token
            assert visual == stats.visual_tokens_by_layer[index]
            assert [s - v for s, v in zip(stored, visual)] == [t + NEW_TOKENS - 1 for t in text]

    for row, single in enumerate(split_batch(model, batch)):
        alone = greedy(model, single, NEW_TOKENS)
        assert torch.equal(alone.sequences[0, -NEW_TOKENS:], together.sequences[row, -NEW_TOKENS:])
        assert max((a[0] - b[row]).abs().max().item() for a, b in zip(alone.logits, together.logits)) < 1e-4


def test_keep_everything_equals_the_unwrapped_model(model, batch):
    reference = greedy(model, batch, NEW_TOKENS)
    for policy in ("sparsevlm:keep=1.0", "adaptinfer:keep=1.0", "sparsevlm:keep=100000"):
        vlmzip.compress(model, policy)
        out = greedy(model, batch, NEW_TOKENS)
        assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) < 1e-5
        assert vlmzip.stats(model).visual_tokens_by_layer == [visual_token_count(model, batch)] * 4


# -- each score against the unwrapped eager model, at one cut ---------------------------------------------------
def _reference(family, inputs):
    with torch.no_grad():
        eager = tiny_model(family, attn_implementation="eager")
        out = eager(**inputs, output_attentions=True, output_hidden_states=True)
    return out.attentions[1][0].mean(dim=0), out.hidden_states[2][0]  # layer 1's head mean; what enters layer 2


def _raters(hidden: torch.Tensor, visual: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
    relevance = (hidden[visual] @ hidden[instruction].T).softmax(dim=1).mean(dim=0)
    above = relevance > relevance.mean()
    return instruction.nonzero().squeeze(1)[above if above.any() else slice(None)]


def _top(scores: torch.Tensor, visual: torch.Tensor, count: int) -> list[int]:
    ranked = torch.where(visual, scores, float("-inf")).argsort(descending=True, stable=True)
    return ranked[:count].tolist()


def _kept(model, inputs, policy: str) -> list[int]:
    vlmzip.compress(model, policy)
    with torch.no_grad():
        model(**inputs)
    return vlmzip.stats(model).visual_positions_kept["prefill"][0]


def test_scores_against_the_eager_attention_of_the_unwrapped_model(family, backend):
    model = tiny_model(family, attn_implementation=backend)
    inputs = random_inputs(model, [2], text_lengths=[6])
    attention, hidden = _reference(family, inputs)
    visual = _visual(model, inputs)[0]
    instruction = ~visual & (torch.arange(len(visual)) > visual.nonzero().max())
    # one cut before layer 2 of 4: n = 32 visual tokens (two 16-token images), equivalent 24 = (2 * 32 + 2 * 16) / 4
    # -> 16 kept; n = 88 for LLaVA-NeXT's views, equivalent 66 -> 44 kept
    n = int(visual.sum())
    raters = _raters(hidden, visual, instruction)
    sparse = attention[raters].mean(dim=0)
    sparsevlm = f"sparsevlm:layers=2,depth=4,keep={3 * n // 4},recycle=false"
    assert _kept(model, inputs, sparsevlm) == sorted(_top(sparse, visual, n // 2))

    among = attention[instruction][:, instruction]
    weight = among.sum(dim=0) + among.sum(dim=1) - among.diagonal()
    adapt = weight @ attention[instruction]
    assert _kept(model, inputs, f"adaptinfer:layers=2,depth=4,keep={3 * n // 4}") == sorted(_top(adapt, visual, n // 2))


def test_sparsevlm_recycles_the_best_dropped_tokens_into_cluster_means(family):
    model = tiny_model(family)
    inputs = random_inputs(model, [3], text_lengths=[6])
    attention, hidden = _reference(family, inputs)
    visual = _visual(model, inputs)[0]
    if int(visual.sum()) != 48:
        pytest.skip(f"the counts below are written for three 16-token images; {family}'s take {int(visual.sum())}")
    instruction = ~visual & (torch.arange(len(visual)) > visual.nonzero().max())
    scores = attention[_raters(hidden, visual, instruction)].mean(dim=0)
    # 48 visual tokens, equivalent 27 -> a budget of 6: 42 dropped, their top 13 (30% + 1) form 2 clusters,
    # so 4 are kept by score and 2 merged tokens take their clusters' centre rows
    ranked = _top(scores, visual, 17)
    pool = ranked[4:]
    centres, members = _density_peaks(hidden[pool], 2)
    merged = torch.stack([hidden[pool][members == c].mean(dim=0) for c in range(2)])

    vlmzip.compress(model, "sparsevlm:layers=2,depth=4,keep=27")
    seen = []  # what enters layer 2, after vlmzip's hook (registered first) cut it
    adapter_for(model).decoder_layers[2].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        model(**inputs)
    kept = vlmzip.stats(model).visual_positions_kept["prefill"][0]
    assert vlmzip.stats(model).visual_tokens_by_layer == [[48], [48], [6], [6]]
    assert kept == sorted(ranked[:4] + [pool[c] for c in centres])
    rows = sorted(set(kept) | set((~visual).nonzero().squeeze(1).tolist()))  # what enters layer 2, in order
    entering = seen[0][0]
    for c, centre in enumerate(centres):
        torch.testing.assert_close(entering[rows.index(pool[centre])], merged[c], rtol=0, atol=1e-5)
    for position in ranked[:4]:
        torch.testing.assert_close(entering[rows.index(position)], hidden[position], rtol=0, atol=1e-5)


def _density_peaks(points: torch.Tensor, count: int) -> tuple[list[int], torch.Tensor]:
    """DPC-kNN written out point by point: k = count nearest (itself included), distances over sqrt(D)."""
    n = len(points)
    distance = torch.tensor([[(points[i] - points[j]).norm().item() for j in range(n)] for i in range(n)])
    distance /= math.sqrt(points.shape[1])
    density = [math.exp(-sum(d * d for d in sorted(distance[i].tolist())[:count]) / count) for i in range(n)]
    order = sorted(range(n), key=lambda i: (-density[i], i))
    separation = [
        min((distance[i, j].item() for j in order[: order.index(i)]), default=distance.max().item()) for i in range(n)
    ]
    centres = sorted(range(n), key=lambda i: (-separation[i] * density[i], i))[:count]
    members = torch.tensor([min(range(count), key=lambda c: (distance[i, centres[c]].item(), c)) for i in range(n)])
    members[centres] = torch.arange(count)
    return centres, members


def test_density_peaks_against_a_plain_computation_and_on_separated_blobs():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(30, 8, generator=generator)
    for count in (1, 2, 4):
        centres, members = density_peaks(points, count, neighbours=count)
        expected_centres, expected_members = _density_peaks(points, count)
        assert centres.tolist() == expected_centres and torch.equal(members, expected_members)
    blobs = torch.cat([torch.randn(10, 8, generator=generator) * 0.1 + 10 * k for k in range(3)])
    centres, members = density_peaks(blobs, 3, neighbours=5)
    assert centres.shape == (3,) and members.shape == (30,)
    assert sorted(members.view(3, 10).unique(dim=1).flatten().tolist()) == [0, 1, 2]  # one cluster per blob


# -- bad parameters ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("sparsevlm:layers=6/2/15", r"sparsevlm: layers=6/2/15 must increase strictly"),
        ("adaptinfer:layers=1/10/32", r"adaptinfer: layers=1/10/32 must lie in 1..31 for depth=32"),
        ("sparsevlm:layers=2/6/15,depth=12", r"sparsevlm: layers=2/6/15 must lie in 1..11 for depth=12"),
        ("adaptinfer:layers=1/2/3/4", r"adaptinfer: layers=1/2/3/4 names 4 cuts; the published budgets have 3"),
        ("sparsevlm:recycle=yes", r"sparsevlm: recycle='yes' is not a valid bool"),
        ("sparsevlm:keep=0", r"sparsevlm: keep=0 must keep at least one token"),
    ],
)
def test_bad_parameters_are_rejected(policy, message):
    with pytest.raises(ValueError, match=message):
        vlmzip.Policy.parse(policy)


def test_recycle_must_be_a_bool():
    with pytest.raises(vlmzip.PolicyError, match=r"sparsevlm: recycle=1 is not a valid"):
        SparseVLM(recycle=1)


@pytest.mark.parametrize("policy", ["sparsevlm:keep=0.2", "adaptinfer:keep=0.1"])
def test_keep_below_the_schedules_floor_is_rejected_at_compress(family, policy):
    model = tiny_model(family)
    with pytest.raises(ValueError, match=r"keep=0\.\d is below this schedule's floor of 0\.25: the first 1 of"):
        vlmzip.compress(model, policy)
    assert vlmzip.policy_of(model) is None
