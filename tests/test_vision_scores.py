"""Vision-attention scores of towers without [CLS] against a brute-force computation from full matrices."""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers.vision_utils import get_vision_window_index

import vlmzip
from vlmzip.eval.tiny import random_inputs, tiny_model
from vlmzip.registry import adapter_for


def _sharpen(model) -> None:
    """Scale the tower's queries so attention is peaked and the ranking is not decided by rounding."""
    with torch.no_grad():
        for block in model.model.visual.blocks:
            rows = block.attn.qkv.weight.shape[1]
            block.attn.qkv.weight[:rows] *= 8
            block.attn.qkv.bias[:rows] *= 8


def _recorded_attention(model, inputs, monkeypatch) -> list[list[torch.Tensor]]:
    """Per tower forward (images, then videos), per block: the eager attention probabilities of each call."""
    module = importlib.import_module(type(model).__module__)
    eager, runs = module.eager_attention_forward, []
    blocks = {id(block.attn): i for i, block in enumerate(model.model.visual.blocks)}

    def recording(attention, query, key, value, attention_mask=None, **kwargs):
        out, weights = eager(attention, query, key, value, attention_mask, **kwargs)
        if id(attention) in blocks:
            runs[-1][blocks[id(attention)]].append(weights[0].double().mean(dim=0))  # mean over heads
        return out, weights

    monkeypatch.setattr(module, "eager_attention_forward", recording)
    hook = model.model.visual.register_forward_pre_hook(lambda *_: runs.append([[] for _ in blocks]))
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    monkeypatch.setattr(module, "eager_attention_forward", eager)
    return runs


def _brute_force(model, family, calls_per_block, grid_thw) -> torch.Tensor:
    """Mean attention each patch receives from its own item's patches, summed over blocks, pooled to tokens."""
    vision = model.config.vision_config
    unit = vision.spatial_merge_size**2
    sizes = grid_thw.prod(dim=-1)
    item = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    total = torch.zeros(int(sizes.sum()), dtype=torch.float64)
    for calls in calls_per_block:
        full = torch.block_diag(*calls)  # [query, key] over the tower's whole sequence
        if family == "qwen2_5_vl":  # the tower attends in window order: back to natural patch order
            window, _ = get_vision_window_index(
                grid_thw, vision.spatial_merge_size, vision.window_size, vision.patch_size
            )
            order = (window[:, None] * unit + torch.arange(unit)).flatten()
            natural = torch.empty_like(full)
            natural[order[:, None], order[None, :]] = full
            full = natural
        for index, size in enumerate(sizes.tolist()):
            mine = item == index
            total[mine] += full[mine][:, mine].sum(dim=0) / size
    return total.view(-1, unit).sum(dim=-1)


@pytest.mark.parametrize("qwen", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_vision_scores_match_brute_force(qwen, monkeypatch):
    family = qwen
    model = tiny_model(family, attn_implementation="eager")
    _sharpen(model)
    # 12 patches a side: Qwen2.5-VL's window order is then no involution, so its inverse is really checked
    inputs = random_inputs(model, [2, 0, 1], text_lengths=[5, 4, 9], video_frames=[4, 6, 2], qwen_patches=12)
    runs = _recorded_attention(model, inputs, monkeypatch)
    expected = {}
    for calls, kind in zip(runs, ("image", "video")):
        grid = inputs[f"{kind}_grid_thw"]
        tokens = (grid.prod(dim=-1) // model.config.vision_config.spatial_merge_size**2).tolist()
        expected[kind] = _brute_force(model, family, calls, grid).split(tokens)

    adapter_class, seen = type(adapter_for(model)), []
    original = adapter_class.vision_scores

    def spy(self, vision_runs, items):
        original(self, vision_runs, items)
        seen.extend((item.kind, item.kind_index, item.signals["vision_attention"]) for item in items)

    monkeypatch.setattr(adapter_class, "vision_scores", spy)
    layers = model.config.vision_config.depth
    for backend in ("eager", "sdpa"):
        compressed = tiny_model(family, attn_implementation=backend)
        _sharpen(compressed)
        vlmzip.compress(compressed, f"vtc-cls:keep=0.5,layers={layers}")
        with torch.no_grad():
            compressed.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert len(seen) == 2 * 6  # three images and three videos, twice
    for kind, index, scores in seen:
        torch.testing.assert_close(scores.double(), expected[kind][index], rtol=1e-4, atol=1e-6)
