"""Each method's choice against a plain reference computed from the unwrapped model."""

from __future__ import annotations

import torch

import vlmzip
from vlmzip.eval.tiny import random_inputs, tiny_model, visual_mask


def _top_visual(scores: torch.Tensor, visual: torch.Tensor, count: int) -> list[int]:
    """Positions of the ``count`` highest-scoring visual rows, ascending."""
    ranked = torch.where(visual, scores, torch.tensor(float("-inf"))).argsort(descending=True, stable=True)
    return sorted(ranked[:count].tolist())


def test_fastv_keeps_what_the_last_token_attends_to_most(family, backend):
    model = tiny_model(family, attn_implementation=backend)
    inputs = random_inputs(model, [2], text_lengths=[6])
    reference = tiny_model(family, attn_implementation="eager")
    with torch.no_grad():
        attentions = reference(**inputs, output_attentions=True).attentions
    scores = attentions[1][0, :, -1, :].mean(dim=0)  # layer K - 1 = 1, last prompt token, head mean
    visual = visual_mask(model, inputs)[0]
    vlmzip.compress(model, "fastv:layer=2,keep=0.25")
    with torch.no_grad():
        model(**inputs)
    kept = vlmzip.stats(model).visual_positions_kept["prefill"][0]
    assert kept == _top_visual(scores, visual, int(visual.sum()) // 4)


def test_vtc_cls_keeps_what_cls_attends_to_most_summed_over_layers():
    model = tiny_model("llava")
    inputs = random_inputs(model, [1], text_lengths=[4])
    reference = tiny_model("llava", attn_implementation="eager")
    with torch.no_grad():
        tower = reference.model.vision_tower(inputs["pixel_values"], output_attentions=True)
    depth = len(tower.attentions) - 1  # feature layer -2: the last layer does not shape the features
    cls = sum(attention[0, :, 0, 1:].mean(dim=0) for attention in tower.attentions[:depth])
    vlmzip.compress(model, "vtc-cls:keep=4,layers=8")
    with torch.no_grad():
        model(**inputs)
    image = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(1)
    expected = sorted(image[cls.argsort(descending=True)[:4]].tolist())
    assert vlmzip.stats(model).visual_positions_kept["vision"][0] == expected


def test_knorm_keeps_the_lowest_norm_visual_keys():
    model = tiny_model("llava")
    inputs = random_inputs(model, [1], text_lengths=[4])
    with torch.no_grad():
        keys = model(**inputs, use_cache=True).cache.layers[3].keys[0]  # [H, L, d], unwrapped
    norms = keys.norm(dim=-1).mean(dim=0)
    visual = inputs["input_ids"][0] == model.config.image_token_id
    vlmzip.compress(model, "knorm:keep=0.25")
    with torch.no_grad():
        layer = model(**inputs).cache.layers[3]
    stored = layer.keys[0][:, layer.visual[0]]
    expected = sorted(_top_visual(-norms, visual, 4))
    torch.testing.assert_close(stored, keys[:, expected])
