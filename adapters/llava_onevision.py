"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's anyres on a SigLIP tower (no [CLS]),
with videos.

As LLaVA-NeXT (``llava_next``: base and high-resolution views as items, ``image_newline`` tokens kept as text), with
three differences: a high-resolution grid larger than ``anyres_max_N`` crops' worth is resampled bilinearly to about
that size (``vision_aspect_ratio``); a sample of several images encodes each as its base view only
(``batch_num_images``); and a video's frames are each pooled 2x2 (bilinear, to ``ceil(side / 2)`` a side), its
tokens followed by one newline. A video is one ``(frames, rows, cols)`` item. Patches are scored by the mean
attention they receive (SigLIP has no [CLS]), mapped through the same layout.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vlmzip.adapter import Part, Placement, VisionRun
from vlmzip.adapters.llava_next import LlavaNextAdapter, View, originals
from vlmzip.errors import InputError
from vlmzip.registry import register_adapter


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    model_types = ("llava_onevision",)
    family = "LLaVA-OneVision"
    notes = (
        "as LLaVA-NeXT, with anyres_max resampling and videos (frames pooled 2x2, one item each); SigLIP mean "
        "received attention; no pruning inside the tower"
    )
    vision_query = "mean"
    feature_strategy = "full"  # SigLIP has no [CLS] to drop

    def placeholder_ids(self) -> dict[str, int]:
        config = self.model.config
        return {"image": config.image_token_id, "video": config.video_token_id}

    def placements(self, kind: str, inputs: dict[str, Any], runs: list[VisionRun]) -> list[Placement]:
        if kind == "image" or not bool((inputs["input_ids"] == self.placeholder_ids()[kind]).any()):
            return super().placements(kind, inputs, runs)
        side = math.ceil(self.side / 2)
        placements = []
        for view in self._video_views(inputs):
            tokens = view.frames * side * side
            placements.append(Placement(tokens + 1, (Part((view.frames, side, side), torch.arange(tokens), view),)))
        return placements

    def _video_views(self, inputs: dict[str, Any]) -> list[View]:
        """Each video's frames, from its pixels ``[videos, frames, ...]`` or its encoded features (``generate``)."""
        pixels = inputs.get("pixel_values_videos")
        if pixels is not None:
            videos, frames = pixels.shape[:2]
            return [self._frames(index * frames, frames) for index in range(videos)]
        encoded = (inputs.get("mm_encoder_outputs") or {}).get("video")
        if encoded is None:
            raise InputError("the prompt has video placeholders but no video input: pass pixel_values_videos")
        outputs = list(encoded.pooler_output)
        frames = (outputs[0].shape[0] - 1) // math.ceil(self.side / 2) ** 2
        sources = originals(outputs)
        starts = {source: order * frames for order, source in enumerate(dict.fromkeys(sources))}
        return [self._frames(starts[source], frames) for source in sources]

    def _frames(self, first: int, frames: int) -> View:
        side, pooled = self.side, math.ceil(self.side / 2)
        return View(first, frames, (1, 1), (0, 0, side, side), (pooled, pooled))

    def _patched(self, inputs: dict[str, Any], images: int) -> list[bool]:
        # the model gives a high-resolution view only to the images of single-image samples
        counts = inputs.get("batch_num_images")
        if counts is None:
            return [True] * images
        return [int(n) == 1 for n in counts for _ in range(int(n))]

    def _resampled(self, height: int, width: int) -> tuple[int, int]:
        # as pack_image_features: a grid over anyres_max_N crops' area shrinks by the ratio (beyond 10% over)
        aspect = self.model.config.vision_aspect_ratio
        most = int(aspect.removeprefix("anyres_max_"))
        ratio = math.sqrt(height * width / (most * self.side**2))
        return (int(height // ratio), int(width // ratio)) if ratio > 1.1 else (height, width)
