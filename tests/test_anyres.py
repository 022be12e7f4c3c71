"""LLaVA-NeXT / OneVision layouts: each view's tokens map to the tower's patches as the model packs them, newline
tokens are never pruned, and a request encoded by generate reads the same layout as one given its image sizes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import greedy

import vlmzip
from vlmzip.adapters.llava_next import image_placement, view_tokens
from vlmzip.eval import bench
from vlmzip.eval.tiny import random_inputs, tiny_model
from vlmzip.registry import adapter_for

ANYRES = ["llava_next", "llava_onevision"]


@pytest.mark.parametrize("name", ANYRES)
@pytest.mark.parametrize("aspect", ["anyres_max_9", "anyres_max_1"])  # max_1 resamples the 4x8 grid to 2x5
def test_view_tokens_are_the_models_packing_of_patches(name, aspect):
    model = tiny_model(name)
    model.config.vision_aspect_ratio = aspect
    adapter, side = adapter_for(model), adapter_for(model).side
    sizes = torch.tensor([[8, 16], [8, 12], [16, 8]])
    for size in sizes:
        placement = adapter.placements(
            "image", {"input_ids": torch.tensor([[3]]), "pixel_values": 0, "image_sizes": size[None]}, []
        )[0]
        views = [part.view for part in placement.parts]
        crops = sum(view.rows for view in views)
        patches = torch.arange(crops * side * side, dtype=torch.float32).view(crops, side * side, 1)  # patch ids
        kwargs = (
            {"vision_aspect_ratio": aspect}
            if name == "llava_onevision"
            else {"vision_feature_select_strategy": "default"}
        )
        packed, _ = model.model.pack_image_features([patches], size[None], image_newline=None, **kwargs)
        ours = torch.cat([view_tokens(patches, view, side) for view in views])
        torch.testing.assert_close(ours, packed[0])
        newlines = placement.length - sum(part.offsets.numel() for part in placement.parts)
        assert newlines == placement.parts[-1].grid[1]  # one per row of the high-resolution view


@pytest.mark.parametrize("name", ANYRES)
def test_generate_reads_the_layout_the_image_sizes_give(name):
    """generate drops image_sizes: the views come from the encoded features (their newline rows)."""
    model = tiny_model(name)
    batch = random_inputs(model, [1, 1, 1], text_lengths=[3, 4, 5])
    adapter = adapter_for(model)
    given = adapter.visual_items(batch, [])
    vlmzip.compress(model, "vtc-cls:keep=0.25")
    greedy(model, batch, 1)
    stats = vlmzip.stats(model)
    assert stats.visual_tokens_kept["vision"] == [
        sum(i.num_tokens for i in given if i.sample == s) // 4 for s in range(3)
    ]


@pytest.mark.parametrize("name", ANYRES)
def test_newline_tokens_are_kept_as_text(name):
    model = tiny_model(name)
    batch = random_inputs(model, [1, 2], text_lengths=[3, 7])
    items = adapter_for(model).visual_items(batch, [])
    visual = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for item in items:
        visual[item.sample, item.positions] = True
    newline = (batch["input_ids"] == model.config.image_token_id) & ~visual
    assert int(newline.sum()) > 0
    vlmzip.compress(model, "uniform:keep=0.25")
    greedy(model, batch, 1)
    stats = vlmzip.stats(model)
    for sample, kept in enumerate(stats.visual_positions_kept["vision"]):
        assert not newline[sample, kept].any()  # pruning chooses among the views' tokens only
    assert stats.visual_tokens_in == visual.sum(dim=1).tolist()


@pytest.mark.parametrize("name", ANYRES)
def test_pruning_inside_the_tower_is_refused(name):
    with pytest.raises(vlmzip.UnsupportedModelError, match="cannot be pruned inside"):
        vlmzip.compress(tiny_model(name), "uniform:keep=4,at_layer=1")


def test_onevision_videos_are_one_item_of_pooled_frames():
    model = tiny_model("llava_onevision")
    batch = random_inputs(model, [1, 0], text_lengths=[4, 6], video_frames=[4, 4])
    videos = [item for item in adapter_for(model).visual_items(batch, []) if item.kind == "video"]
    assert [item.grid for item in videos] == [(4, 2, 2)] * 2  # 4x4 patches pool to 2x2; the newline is text
    only_videos = random_inputs(model, [0, 0], text_lengths=[4, 6], video_frames=[4, 4])
    reference = greedy(model, only_videos)
    vlmzip.compress(model, "fastvid:keep=1.0")
    assert torch.equal(greedy(model, only_videos).sequences, reference.sequences)
    vlmzip.compress(model, "fastvid:keep=0.25")
    greedy(model, only_videos)
    assert vlmzip.stats(model).visual_tokens_kept["vision"] == [4, 4]
    vlmzip.compress(model, "visionzip:keep=0.25")
    greedy(model, batch)
    assert vlmzip.stats(model).visual_tokens_kept["vision"] == [(48 + 16) // 4, 16 // 4]


@pytest.mark.parametrize("arch", ["llava-next-7b", "llava-onevision-7b"])
def test_real_size_views_from_features_are_those_of_the_image_size(arch):
    """Under generate the views come from the features and the tower's row count; on the real-size layouts (never
    built: the adapter reads only the config) they are the image size's views: exactly for NeXT, and for OneVision's
    resampled grids up to a near window for a few sizes (docs/architecture.md)."""
    config = bench.ARCHS[arch]()
    newline = torch.randn(4)
    adapter = adapter_for(SimpleNamespace(config=config, model=SimpleNamespace(image_newline=newline)))
    sizes = [(h, w) for h in range(100, 3000, 397) for w in range(100, 3000, 389)]
    wrong = 0
    for size in sizes:
        views = adapter._views_of_size(torch.tensor(size), 0)
        placement = image_placement(views, adapter.side)
        features = newline.expand(placement.length, 4).clone()
        for part in placement.parts:
            features[part.offsets] = torch.randn(part.offsets.numel(), 4)
        wrong += adapter._views_of_features([features], 1 + views[1].rows)[0] != views
    assert wrong == 0 if arch == "llava-next-7b" else wrong <= len(sizes) // 8
