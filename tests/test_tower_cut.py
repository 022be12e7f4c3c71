"""Pruning inside the vision tower (``at_layer``): keep-all identity, exact counts, the features the language
model receives against the tower run by hand on the kept patches, and refusals."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

import vlmzip
from vlmzip.eval.families import tiny_models
from vlmzip.eval.tiny import random_inputs, tiny_model

TOWER_FAMILIES = ["llava", "gemma3"]


def _deep_tower(tower_family: str, backend: str = "sdpa"):
    """A tiny model whose tower has 4 layers (the stock tiny towers have 2), so a cut can sit inside it."""
    config = tiny_models()[tower_family].config()
    config.vision_config.num_hidden_layers = 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config, attn_implementation=backend, dtype=torch.float32)
    reference = tiny_model(tower_family)  # the generation settings the tiny models use
    model.generation_config = reference.generation_config
    return model.eval()


def _language_model_inputs(model, inputs) -> torch.Tensor:
    """``inputs_embeds`` as the language model receives them."""
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("tower_family", TOWER_FAMILIES)
def test_keeping_everything_inside_the_tower_changes_nothing(tower_family, attention):
    model = _deep_tower(tower_family, attention)
    inputs = random_inputs(model, [1, 2], seed=1)
    with torch.no_grad():
        expected = model(**inputs).logits
    for policy in ("uniform:keep=1.0,at_layer=2", "vtc-cls:keep=1.0,at_layer=1,layers=1"):
        vlmzip.compress(model, policy=policy)
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, expected), policy
        vlmzip.restore(model)


@pytest.mark.parametrize("tower_family", TOWER_FAMILIES)
def test_counts_and_generate_at_batch_size_two(tower_family):
    model = _deep_tower(tower_family)
    inputs = random_inputs(model, [2, 1], seed=2)
    tokens = model.config.mm_tokens_per_image if tower_family == "gemma3" else 16
    vlmzip.compress(model, policy="vtc-cls:keep=0.25,at_layer=2,layers=2")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    stats = vlmzip.stats(model)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert stats.visual_tokens_in == [2 * tokens, tokens]
    assert stats.visual_tokens_kept["vision"] == [2 * (tokens // 4), tokens // 4]
    vlmzip.restore(model)


@pytest.mark.parametrize("tower_family", TOWER_FAMILIES)
def test_a_pruned_batch_equals_each_sample_alone(tower_family):
    model = _deep_tower(tower_family)
    inputs = random_inputs(model, [1, 1], text_lengths=[5, 9], seed=3)
    vlmzip.compress(model, policy="vtc-cls:keep=5,at_layer=2")
    with torch.no_grad():
        batch = model(**inputs).logits[:, -1]
        for i in range(2):
            alone = {k: v[i : i + 1] for k, v in inputs.items()}
            valid = alone["attention_mask"][0].bool()
            alone = {k: (v[:, valid] if v.dim() == 2 and k != "pixel_values" else v) for k, v in alone.items()}
            torch.testing.assert_close(model(**alone).logits[0, -1], batch[i], rtol=1e-4, atol=1e-5)
    vlmzip.restore(model)


@pytest.mark.parametrize("tower_family", TOWER_FAMILIES)
def test_features_equal_the_tower_run_by_hand_on_the_kept_patches(tower_family):
    model = _deep_tower(tower_family)
    inputs = random_inputs(model, [1, 1], seed=4)
    keep, at = 4, 2
    vlmzip.compress(model, policy=f"uniform:keep={keep},at_layer={at}")
    received = _language_model_inputs(model, inputs)
    vlmzip.restore(model)
    image = model.config.image_token_id
    kept_tokens = _uniform_tokens(model, keep)
    with torch.no_grad():
        expected = _by_hand(model, tower_family, inputs["pixel_values"], kept_tokens, at)
    # the language model's rows: each sample's kept image tokens, in order, where its placeholders began
    for sample in range(2):
        ids = inputs["input_ids"][sample]
        first = int((ids == image).nonzero()[0])
        torch.testing.assert_close(received[sample, first : first + keep], expected[sample], rtol=1e-5, atol=1e-6)


def _uniform_tokens(model, keep: int) -> torch.Tensor:
    from vlmzip.methods.uniform import _evenly_spaced
    from vlmzip.registry import adapter_for

    grid = adapter_for(model).tower_grid()
    return _evenly_spaced(grid[1] * grid[2], keep, grid)


def _by_hand(model, tower_family: str, pixels: torch.Tensor, tokens: torch.Tensor, at: int) -> torch.Tensor:
    """Each image's kept-token features: the tower's layers up to ``at`` on every patch, the rest on the kept
    tokens' patches only, then the tower_family's own feature path on those patches alone."""
    tower = getattr(model.model.vision_tower, "vision_model", model.model.vision_tower)
    layers = tower.encoder.layers
    if tower_family == "llava":
        hidden = tower.pre_layrnorm(tower.embeddings(pixels))
        rows = torch.cat([torch.zeros(1, dtype=torch.long), tokens + 1])
        depth = model.config.vision_feature_layer % (len(layers) + 1)
        for i, layer in enumerate(layers[:depth]):
            hidden = layer(hidden[:, rows] if i == at else hidden, None)
        return model.model.multi_modal_projector(hidden[:, 1:])
    hidden = tower.embeddings(pixels)
    side, cells = int(hidden.shape[1] ** 0.5), int(model.config.mm_tokens_per_image**0.5)
    kernel = side // cells
    patch = torch.arange(side * side).view(cells, kernel, cells, kernel).permute(0, 2, 1, 3).reshape(cells**2, -1)
    rows = patch[tokens].flatten().sort().values
    for i, layer in enumerate(layers):
        hidden = layer(hidden[:, rows] if i == at else hidden, None)
    hidden = tower.post_layernorm(hidden)
    order = {int(r): j for j, r in enumerate(rows)}
    pooled = torch.stack([hidden[:, [order[int(p)] for p in patch[t]]].mean(dim=1) for t in tokens], dim=1)
    projector = model.model.multi_modal_projector
    return torch.matmul(projector.mm_soft_emb_norm(pooled), projector.mm_input_projection_weight)


@pytest.mark.parametrize(
    ("tower_family", "policy", "error", "message"),
    [
        ("llava", "uniform:keep=4,at_layer=3", vlmzip.PolicyError, r"at_layer=3 is not inside .* use 1\.\.2"),
        ("gemma3", "uniform:keep=4,at_layer=4", vlmzip.PolicyError, r"at_layer=4 is not inside .* use 1\.\.3"),
    ],
)
def test_a_layer_outside_the_tower_is_refused(tower_family, policy, error, message):
    model = _deep_tower(tower_family)
    with pytest.raises(error, match=message):
        vlmzip.compress(model, policy=policy)
