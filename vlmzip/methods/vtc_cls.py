"""VTC-CLS: keep the visual tokens the vision tower's [CLS] token attends to most."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmzip.errors import PolicyError
from vlmzip.registry import register_method
from vlmzip.stages import ModelInfo, VisionMethod, VisualItem


@register_method
@dataclass(frozen=True)
class VtcCls(VisionMethod):
    """ "[CLS] Token Tells Everything Needed for Training-free Efficient MLLMs" (THU-MIG/VTC-CLS).

    Score = head-averaged attention of the [CLS] query on each patch, summed over the ``layers`` encoder
    layers that end at the feature layer (``layers=1`` is FasterVLM's single-layer score). Towers without a
    [CLS] token (SigLIP, Qwen-VL's ViT) use the mean attention each patch receives instead, pooled to
    language-model tokens by the adapter. Keeps the top ``keep`` tokens per item in their original order.
    """

    name = "vtc-cls"
    paper = "arXiv:2412.05819"
    title = "[CLS] Token Tells Everything Needed for Training-free Efficient MLLMs"
    deviation = (
        "`layers=8` is the reference code's `--layer 15` on a 24-layer CLIP tower (the layers that end at the "
        "feature layer); `layers=1` is FasterVLM; towers without [CLS] (SigLIP, Qwen-VL's ViT) score by the mean "
        "attention each patch receives, pooled to language-model tokens"
    )
    needs = frozenset({"vision_attention"})
    layers: int = 8

    def validate(self) -> None:
        if self.layers < 1:
            raise PolicyError(f"vtc-cls: layers={self.layers} must be >= 1")

    def vision_layers(self, info: ModelInfo) -> list[int]:
        last = (self.at_layer or info.vision_layers) - 1
        return list(range(max(0, last - self.layers + 1), last + 1))

    def score(self, item: VisualItem) -> torch.Tensor:
        return item.signals["vision_attention"]
