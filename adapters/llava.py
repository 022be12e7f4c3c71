"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower with [CLS], one fixed-size grid per image."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from vlmzip.adapter import Adapter, VisionRun, summed_attention
from vlmzip.errors import UnsupportedModelError
from vlmzip.registry import register_adapter
from vlmzip.stages import VisualItem


@register_adapter
class LlavaAdapter(Adapter):
    model_types = ("llava",)
    family = "LLaVA-1.5"
    notes = (
        "CLIP [CLS] attention; 'default' feature strategy; a Llama or a Gemma-3 language model (llava-gemma; "
        "tested as `tiny-llava_gemma3`)"
    )
    vision_query = "cls"
    #: the ``vision_feature_select_strategy`` the adapter reads features by ("default": the [CLS] row is dropped)
    feature_strategy: ClassVar[str] = "default"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        config = model.config
        if not isinstance(config.vision_feature_layer, int):
            raise UnsupportedModelError(f"vlmzip supports {self.family} with a single vision_feature_layer")
        if config.vision_feature_select_strategy != self.feature_strategy:
            raise UnsupportedModelError(
                f"vlmzip supports {self.family}'s {self.feature_strategy!r} feature strategy, got "
                f"{config.vision_feature_select_strategy!r}"
            )

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def vision_attention_modules(self) -> list[nn.Module]:
        layers = _encoder_layers(self.vision_tower)
        # only the layers up to the feature layer shape the features (-2: all but the last)
        depth = self.model.config.vision_feature_layer % (len(layers) + 1)
        return [layer.self_attn for layer in layers[:depth]]

    def placeholder_ids(self) -> dict[str, int]:
        return {"image": self.model.config.image_token_id}

    def item_grids(self, kind: str, inputs: dict, runs: list[VisionRun]) -> list[tuple[int, int, int]]:
        grid = self.tower_grid()
        return [grid] * self.encoded_count(inputs, runs, grid[1] * grid[2])

    # one token per patch, after the [CLS] row
    tower_cut = True

    def tower_layers(self) -> nn.ModuleList:
        return _encoder_layers(self.vision_tower)

    def tower_grid(self) -> tuple[int, int, int]:
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        return (1, side, side)

    def tower_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, 1:]

    def tower_rows(self, keep: torch.Tensor) -> torch.Tensor:
        return torch.cat([keep.new_zeros(len(keep), 1), keep + 1], dim=1)

    def vision_scores(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        # [CLS]-row mass per layer: [images, 1 + patches]; sum the layers, drop the [CLS] column
        per_image = torch.cat([summed_attention(run) for run in runs])
        per_image = per_image[:, 1:]
        for item in items:
            item.signals["vision_attention"] = per_image[item.kind_index].to(item.positions.device)

    def tower_features(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        # the projector maps each patch on its own: one tower vector per token ([images, patches, D_vision])
        per_image = torch.cat([inputs for run in runs for inputs in run.projector_inputs])
        for item in items:
            item.signals["tower_features"] = per_image[item.kind_index].unsqueeze(1)

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        # the projector maps each tower vector on its own; a token made of several (a pooled video cell) is their mean
        return self.projector(inputs).mean(dim=1)


def _encoder_layers(tower: nn.Module) -> nn.ModuleList:
    model = getattr(tower, "vision_model", tower)
    return model.encoder.layers
