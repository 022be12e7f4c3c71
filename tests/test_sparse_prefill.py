"""Block-sparse prefill methods (minference, flexprefill, xattention, blindsight) on every family and backend:
selecting every block is the unwrapped model, a sparse batch is each sample alone, short prompts run the model's own
attention, the kernel gets the blocks the selection formula gives, BlindSight's calibration file, composition with
token pruning, and bad parameters."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import batch_of_two, full_attention_layers, greedy, max_logit_diff

import vlmzip
from vlmzip.blindsight import TEMPLATES, load_calibration, template_blocks
from vlmzip.eval.tiny import random_inputs, split_batch, tiny_model, visual_token_count
from vlmzip.kernels.block_sparse_attention import block_sparse_attention_reference
from vlmzip.registry import adapter_for
from vlmzip.sparse import (
    Layout,
    antidiagonal_scores,
    block_sum,
    candidate_blocks,
    cover,
    forced_blocks,
    last_rows_scores,
    line_blocks,
    pooled_scores,
)
from vlmzip.stages import PrefillMethod

METHODS = ("minference", "flexprefill", "xattention", "blindsight")
TINY = "min_length=0,block=16"  # tiny prompts: small blocks, sparse at any length
EVERY_BLOCK = {"minference": "vertical=100000", "flexprefill": "min_budget=100000", "xattention": "threshold=1.0"}
SPARSE = {
    "minference": "vertical=40,slash=8,last_q=4",  # 30 forced columns and 8 diagonals, 10 chosen columns
    "flexprefill": "gamma=0.5,min_budget=0",
    "xattention": "threshold=0.5,stride=4",
}


def _templates_file(model, path, template: str) -> str:
    """A BlindSight calibration file for ``model`` giving every head ``template``."""
    info = adapter_for(model).model_info()
    data = {
        "format": "vlmzip-blindsight/1",
        "model_type": info.model_type,
        "layers": info.num_layers,
        "heads": info.heads,
        "kv_heads": info.kv_heads,
        "templates": [[template] * info.heads for _ in range(info.num_layers)],
    }
    path.write_text(json.dumps(data))
    return str(path)


def _policy(method: str, model, tmp_path, every_block: bool) -> str:
    if method == "blindsight":
        setting = f"calibration={_templates_file(model, tmp_path / 'b.json', 'dense' if every_block else 'sink')}"
    else:
        setting = (EVERY_BLOCK if every_block else SPARSE)[method]
    return f"{method}:{TINY},{setting}"


def _long(model) -> dict:
    """Two left-padded prompts long enough for several 16-row blocks (two images, text around them)."""
    return random_inputs(model, [1, 2], text_lengths=[60, 150])


@pytest.mark.parametrize("method", METHODS)
def test_selecting_every_block_equals_the_unwrapped_model(family, backend, method, tmp_path):
    model = tiny_model(family, attn_implementation=backend)
    batch = _long(model)
    reference = greedy(model, batch)
    vlmzip.compress(model, _policy(method, model, tmp_path, every_block=True))
    out = greedy(model, batch)
    density = vlmzip.stats(model).attention_density
    assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) < 1e-4
    assert density == [[1.0, 1.0]] * model.config.get_text_config().num_hidden_layers


@pytest.mark.parametrize("method", METHODS)
def test_a_sparse_batch_equals_each_sample_alone(family, backend, method, tmp_path):
    model = tiny_model(family, attn_implementation=backend)
    batch = _long(model)
    vlmzip.compress(model, _policy(method, model, tmp_path, every_block=False))
    together = greedy(model, batch)
    density = vlmzip.stats(model).attention_density
    assert min(min(layer) for layer in density) < 1.0  # the setting is sparse somewhere
    for row, single in enumerate(split_batch(model, batch)):
        alone = greedy(model, single)
        assert torch.equal(alone.sequences[0, -5:], together.sequences[row, -5:])
        assert max((a[0] - b[row]).abs().max().item() for a, b in zip(alone.logits, together.logits)) < 1e-4
        assert [layer[0] for layer in vlmzip.stats(model).attention_density] == pytest.approx(
            [layer[row] for layer in density]
        )


def test_prompts_below_min_length_run_the_models_own_attention_exactly(family, backend):
    model = tiny_model(family, attn_implementation=backend)
    batch = batch_of_two(model)
    reference = greedy(model, batch)
    vlmzip.compress(model, "xattention:block=16,threshold=0.1")  # min_length 8192 by default
    out = greedy(model, batch)
    assert torch.equal(out.sequences, reference.sequences) and max_logit_diff(out, reference) == 0
    assert all(layer == [1.0, 1.0] for layer in vlmzip.stats(model).attention_density)


def test_a_sample_below_min_length_is_dense_in_a_sparse_batch():
    model = tiny_model("llava")
    batch = _long(model)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    vlmzip.compress(model, f"minference:block=16,min_length={max(lengths)},{SPARSE['minference']}")
    greedy(model, batch)
    density = vlmzip.stats(model).attention_density
    short = lengths.index(min(lengths))
    assert all(layer[short] == 1.0 and layer[1 - short] < 1.0 for layer in density)


# -- the blocks the kernel gets ------------------------------------------------------------------------------------
def test_the_kernel_gets_the_blocks_the_selection_formula_gives(monkeypatch):
    calls = []
    import vlmzip.stages.sparse as sparse_stage

    def spy(query, key, value, block_mask, **kwargs):
        calls.append((query, key, block_mask, kwargs))
        return block_sparse_attention_reference(query, key, value, block_mask, **kwargs)

    monkeypatch.setattr(sparse_stage, "block_sparse_attention", spy)
    model = tiny_model("qwen2_5_vl", attn_implementation="eager")
    batch = _long(model)
    vlmzip.compress(model, f"xattention:{TINY},{SPARSE['xattention']}")
    with torch.no_grad():
        model(**batch)
    lengths = batch["attention_mask"].sum(dim=1)
    assert len(calls) == 4
    for query, key, block_mask, kwargs in calls:
        layout = Layout(query.shape[2] - lengths, lengths, None, None)
        candidates = candidate_blocks(layout, query.shape[2], 16)
        chosen = cover(antidiagonal_scores(query, key, layout, 4, 16, kwargs["scale"]), candidates, 0.5)
        assert torch.equal(block_mask, (chosen | forced_blocks(candidates)) & candidates)
        assert kwargs["key_end"] is None and kwargs["block_q"] == kwargs["block_k"] == 16


# -- BlindSight calibration ----------------------------------------------------------------------------------------
def _expected_templates(family: str, prompts: list[dict], recall: float) -> list[list[str]]:
    """Each head's sparsest template keeping ``recall`` of the attention of the rows templates restrict, from the
    unwrapped eager model's attention weights (prompts of one sample, no padding)."""
    model = tiny_model(family, attn_implementation="eager")
    image = model.config.image_token_id
    sums, rows = 0.0, 0
    for inputs in prompts:
        ids = inputs["input_ids"][0]
        starts = (ids == image) & (torch.cat([torch.tensor([True]), ids[:-1] != image]))
        items = torch.where(ids == image, starts.cumsum(0) - 1, -1)[None]
        length = ids.shape[0]
        layout = Layout(torch.tensor([0]), torch.tensor([length]), None, None)
        candidates = candidate_blocks(layout, length, 16)
        masks = ((template_blocks(items, layout.lengths, 16) | forced_blocks(candidates)) & candidates)[0]
        element = masks.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)[:, :length, :length]  # [4, S, S]
        restricted = (masks[0] != masks[3]).any(dim=-1).repeat_interleave(16)[:length]
        with torch.no_grad():
            weights = torch.stack(model(**inputs, output_attentions=True).attentions)[:, 0]  # [layers, H, S, S]
        kept = torch.einsum("lhrk,trk->lht", weights[:, :, restricted], element[:, restricted].float())
        sums, rows = sums + kept, rows + int(restricted.sum())
    mean = sums / rows  # [layers, H, 4]
    return [[TEMPLATES[int((head >= recall - 1e-6).nonzero()[0])] for head in layer] for layer in mean]


def test_blindsight_calibration_picks_each_heads_sparsest_template_that_keeps_recall(tmp_path):
    model = tiny_model("qwen2_5_vl")
    prompts = [random_inputs(model, [3], text_lengths=[40], seed=seed) for seed in range(2)]
    info = adapter_for(model).model_info()
    for recall in (1e-9, 0.9, 0.99, 1.0):
        calibration = vlmzip.calibrate_blindsight(model, prompts, tmp_path / "b.json", recall=recall, block=16)
        assert [list(layer) for layer in calibration.templates] == _expected_templates("qwen2_5_vl", prompts, recall)
    assert calibration.templates != ((("sink",) * info.heads,) * info.num_layers)
    data = json.loads((tmp_path / "b.json").read_text())
    assert (data["model_type"], data["layers"], data["heads"], data["kv_heads"]) == ("qwen2_5_vl", 4, 4, 2)
    assert data["prompts"] == 2 and data["recall"] == 1.0 and load_calibration(tmp_path / "b.json") == calibration
    assert vlmzip.policy_of(model) is None  # calibration leaves the model as it was
    loose = vlmzip.calibrate_blindsight(model, prompts, tmp_path / "loose.json", recall=1e-9, block=16)
    assert loose.templates == ((("sink",) * info.heads,) * info.num_layers)
    vlmzip.compress(model, f"blindsight:{TINY},calibration={tmp_path / 'loose.json'}")
    greedy(model, prompts[0])
    assert min(min(layer) for layer in vlmzip.stats(model).attention_density) < 1.0


def test_a_calibration_for_another_model_is_refused(tmp_path):
    qwen = tiny_model("qwen2_5_vl")
    path = _templates_file(qwen, tmp_path / "qwen.json", "sink")
    with pytest.raises(vlmzip.PolicyError, match=r"calibration .* is for model type 'qwen2_5_vl'.* 'llava'"):
        vlmzip.compress(tiny_model("llava"), f"blindsight:calibration={path}")
    data = json.loads((tmp_path / "qwen.json").read_text())
    data.update(heads=8, kv_heads=2, templates=[["sink"] * 8] * 4)
    (tmp_path / "heads.json").write_text(json.dumps(data))
    with pytest.raises(vlmzip.PolicyError, match=r"is for heads 8, this model has 4"):
        vlmzip.compress(qwen, f"blindsight:calibration={tmp_path / 'heads.json'}")
    data.update(heads=4, layers=5, templates=[["sink"] * 4] * 5)
    (tmp_path / "layers.json").write_text(json.dumps(data))
    with pytest.raises(vlmzip.PolicyError, match=r"is for layers 5, this model has 4"):
        vlmzip.compress(qwen, f"blindsight:calibration={tmp_path / 'layers.json'}")
    data.update(layers=4, templates=[["blurry"] * 4] * 4)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(vlmzip.PolicyError, match=r"one template of " + ", ".join(TEMPLATES).replace("+", r"\+")):
        vlmzip.Policy.parse(f"blindsight:calibration={tmp_path / 'bad.json'}")


# -- composition with token pruning --------------------------------------------------------------------------------
def test_sparse_attention_runs_in_every_layer_around_a_fastv_cut(family):
    model = tiny_model(family)
    batch = _long(model)
    policy = f"fastv:layer=3,keep=0.25+minference:{TINY},{SPARSE['minference']}"  # Gemma-3's layer 2 is full
    vlmzip.compress(model, policy)
    greedy(model, batch)
    stats = vlmzip.stats(model)
    expected = [[n, n, n, n // 4] for n in visual_token_count(model, batch)]
    assert stats.visual_tokens_by_layer == [list(layer) for layer in zip(*expected)]
    assert len(stats.attention_density) == 4 and min(sum(stats.attention_density[:3], [])) < 1.0  # before the cut
    assert str(vlmzip.policy_of(model)) == policy
    assert vlmzip.Policy.parse(f"minference:{TINY},{SPARSE['minference']}+fastv:layer=3,keep=0.25") == (
        vlmzip.Policy.parse(policy)
    )


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("fastv+dart", r"two prefill-stage methods \(fastv and dart\) cannot be combined: both cut rows"),
        ("minference+xattention", r"\(minference and xattention\) cannot be combined: both supply attention"),
        ("fastv+minference+xattention", r"\(composed and xattention\).*composed both cuts and supplies attention"),
    ],
)
def test_two_prefill_methods_combine_only_as_a_cutter_and_an_attender(policy, message):
    with pytest.raises(vlmzip.PolicyError, match=message):
        vlmzip.Policy.parse(policy)


def test_a_prefill_method_with_no_steps_is_refused():
    class Idle(PrefillMethod):
        name = "idle"

    with pytest.raises(vlmzip.PolicyError, match="Idle does nothing: a prefill method defines schedule"):
        Idle()


# -- bad parameters ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("minference:block=48", r"minference: block=48 must be a power of two >= 16"),
        ("xattention:block=8", r"xattention: block=8 must be a power of two >= 16"),
        ("xattention:threshold=0", r"xattention: threshold=0.0 must be in \(0, 1\]"),
        ("xattention:threshold=1.5", r"xattention: threshold=1.5 must be in \(0, 1\]"),
        ("xattention:stride=3", r"xattention: stride=3 must be a power of two no larger than block=128"),
        ("flexprefill:gamma=0", r"flexprefill: gamma=0.0 must be in \(0, 1\]"),
        ("flexprefill:gamma=1.2", r"flexprefill: gamma=1.2 must be in \(0, 1\]"),
        ("flexprefill:tau=-0.1", r"flexprefill: tau=-0.1 must be in \[0, 1\]"),
        ("minference:min_length=-1", r"minference: min_length=-1 must be >= 0"),
        ("minference:vertical=0", r"minference: vertical, slash and last_q must be >= 1"),
        ("blindsight", r"blindsight: calibration=PATH is required"),
        ("blindsight:calibration=/nonexistent.json", r"cannot read calibration '/nonexistent.json'"),
    ],
)
def test_bad_parameters_are_rejected(policy, message):
    with pytest.raises(vlmzip.PolicyError, match=message):
        vlmzip.Policy.parse(policy)


def test_policies_without_attention_record_no_density():
    model = tiny_model("llava")
    vlmzip.compress(model, "fastv:layer=2,keep=0.5")
    greedy(model, batch_of_two(model))
    assert vlmzip.stats(model).attention_density == []


def test_minference_computes_the_blocks_of_the_last_rows_top_columns_and_nearest_diagonals(monkeypatch, family):
    calls = []
    import vlmzip.stages.sparse as sparse_stage

    def spy(query, key, value, block_mask, **kwargs):
        calls.append(block_mask)
        return block_sparse_attention_reference(query, key, value, block_mask, **kwargs)

    monkeypatch.setattr(sparse_stage, "block_sparse_attention", spy)
    model = tiny_model(family, attn_implementation="eager")
    if 0 not in full_attention_layers(model):
        pytest.skip("layer 0 is a sliding-window layer (its blocks are a band)")
    inputs = random_inputs(model, [1], text_lengths=[60])
    with torch.no_grad():  # layer 0 sees the same inputs with and without vlmzip
        weights = model(**inputs, output_attentions=True).attentions[0][0]  # [H, S, S]
    vlmzip.compress(model, f"minference:{TINY},vertical=40,slash=8,last_q=4")
    with torch.no_grad():
        model(**inputs)
    heads, length = weights.shape[0], weights.shape[-1]
    rows, keys = torch.arange(length)[:, None], torch.arange(length)[None, :]
    vertical = weights[:, -4:].sum(dim=1)  # [H, S]
    expected = torch.zeros(heads, length, length, dtype=torch.bool)
    for h in range(heads):
        columns = set(range(30)) | set((vertical[h, 30:].topk(10).indices + 30).tolist())  # 30 forced, 10 chosen
        column_mask = torch.isin(keys, torch.tensor(sorted(columns)))
        expected[h] = (column_mask | (rows - keys < 8)) & (keys <= rows)  # the 8 nearest diagonals
    n = -(-length // 16)
    padded = torch.zeros(heads, n * 16, n * 16, dtype=torch.bool)
    padded[:, :length, :length] = expected
    blocks = padded.view(heads, n, 16, n, 16).any(dim=(2, 4))
    blocks |= torch.eye(n, dtype=torch.bool) | (torch.arange(n)[None, :] == 0)  # diagonal and sink
    blocks &= torch.ones(n, n, dtype=torch.bool).tril()
    assert torch.equal(calls[0][0], blocks)


@pytest.mark.parametrize("tau", [0.0, 1.0])  # every head vertical-slash; every head query-aware
def test_flexprefill_takes_the_pattern_its_jensen_shannon_test_picks(monkeypatch, tau):
    calls = []
    import vlmzip.stages.sparse as sparse_stage

    def spy(query, key, value, block_mask, **kwargs):
        calls.append((query, key, block_mask, kwargs["scale"]))
        return block_sparse_attention_reference(query, key, value, block_mask, **kwargs)

    monkeypatch.setattr(sparse_stage, "block_sparse_attention", spy)
    model = tiny_model("qwen2_vl")
    inputs = random_inputs(model, [2], text_lengths=[100])
    vlmzip.compress(model, f"flexprefill:{TINY},gamma=0.6,min_budget=0,tau={tau}")
    with torch.no_grad():
        model(**inputs)
    query, key, block_mask, scale = calls[0]
    length = query.shape[2]
    layout = Layout(torch.tensor([0]), torch.tensor([length]), None, None)
    candidates = candidate_blocks(layout, length, 16)
    if tau:
        chosen = cover(pooled_scores(query, key, layout, 16, scale), candidates, 0.6)
    else:
        vertical, slash = (block_sum(x, 16) for x in last_rows_scores(query, key, layout, 16, scale))
        first = torch.arange(vertical.shape[-1]) == 0
        chosen = line_blocks(cover(vertical, first | True, 0.6) | first, cover(slash, first | True, 0.6) | first)
    expected = (chosen | forced_blocks(candidates)) & candidates
    assert torch.equal(block_mask, expected) and not torch.equal(block_mask, candidates.expand_as(block_mask))
