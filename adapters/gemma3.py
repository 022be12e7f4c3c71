"""Gemma-3 (``Gemma3ForConditionalGeneration``): SigLIP tower without [CLS], patches average-pooled to a fixed
square grid of ``mm_tokens_per_image`` tokens per image.

The language model receives Gemma-3's per-layer-type mask dict (image tokens attend bidirectionally within their
image, built from ``token_type_ids`` before the language model runs); the runtime slices those masks, so nothing
but the core's cut is needed here (``token_type_ids`` never reach the language model).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD

from vlmzip.adapter import Adapter, VisionRun, summed_attention
from vlmzip.errors import UnsupportedModelError
from vlmzip.registry import register_adapter
from vlmzip.stages import VisualItem


@register_adapter
class Gemma3Adapter(Adapter):
    model_types = ("gemma3",)
    family = "Gemma-3"
    notes = "bidirectional image blocks, sliding-window layers (left alone by decode-stage methods)"
    vision_query = "mean"  # SigLIP has no [CLS]: score a patch by the mean attention it receives
    image_mean, image_std = tuple(IMAGENET_STANDARD_MEAN), tuple(IMAGENET_STANDARD_STD)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        config = model.config
        vision = config.vision_config
        self.patches_per_side = vision.image_size // vision.patch_size
        self.tokens_per_side = math.isqrt(config.mm_tokens_per_image)
        if self.tokens_per_side**2 != config.mm_tokens_per_image or self.patches_per_side % self.tokens_per_side != 0:
            raise UnsupportedModelError(
                f"vlmzip expects Gemma-3's mm_tokens_per_image ({config.mm_tokens_per_image}) to be a square "
                f"whose side divides the patch grid side ({self.patches_per_side})"
            )

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def vision_attention_modules(self) -> list[nn.Module]:
        # the projector reads the last hidden state: every encoder layer shapes the features
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
        return [layer.self_attn for layer in tower.encoder.layers]

    def placeholder_ids(self) -> dict[str, int]:
        return {"image": self.model.config.image_token_id}

    def item_grids(self, kind: str, inputs: dict, runs: list[VisionRun]) -> list[tuple[int, int, int]]:
        side = self.tokens_per_side
        return [(1, side, side)] * self.encoded_count(inputs, runs, side * side)

    # a token is a square cell of patches: a kept token keeps its whole cell, so the projector's average
    # pooling of a kept cell is exact and pruned cells (zeros) are dropped with their tokens
    tower_cut = True

    def tower_layers(self) -> nn.ModuleList:
        return getattr(self.vision_tower, "vision_model", self.vision_tower).encoder.layers

    def tower_grid(self) -> tuple[int, int, int]:
        return (1, self.tokens_per_side, self.tokens_per_side)

    def tower_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        images, _, dim = hidden.shape
        grid = hidden.transpose(1, 2).reshape(images, dim, self.patches_per_side, self.patches_per_side)
        kernel = self.patches_per_side // self.tokens_per_side
        return F.avg_pool2d(grid.float(), kernel_size=kernel, stride=kernel).flatten(2).transpose(1, 2)

    def tower_rows(self, keep: torch.Tensor) -> torch.Tensor:
        kernel, side = self.patches_per_side // self.tokens_per_side, self.patches_per_side
        rows, cols = keep // self.tokens_per_side * kernel, keep % self.tokens_per_side * kernel
        offsets = torch.arange(kernel, device=keep.device)
        patch_rows = (rows[..., None] + offsets)[..., :, None]  # [images, k, kernel, 1]
        patch_cols = (cols[..., None] + offsets)[..., None, :]  # [images, k, 1, kernel]
        return (patch_rows * side + patch_cols).flatten(1).sort(dim=1).values

    def vision_scores(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        # per layer: [images, patches] from each attention call (one per layer for SigLIP); sum the layers
        per_patch = torch.cat([summed_attention(run) for run in runs])
        per_token = self._pool_like_projector(per_patch)
        for item in items:
            item.signals["vision_attention"] = per_token[item.kind_index].to(item.positions.device)

    def tower_features(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        # the projector average-pools patches into cells and maps each cell on its own: a token's input is its
        # pooled cell (a perturbation of the cell is the same perturbation of each of its patches)
        patches = torch.cat([inputs for run in runs for inputs in run.projector_inputs])
        projector, side = self.projector, self.patches_per_side
        grid = patches.transpose(1, 2).reshape(len(patches), -1, side, side).contiguous()
        cells = projector.avg_pool(grid).flatten(2).transpose(1, 2)  # [images, tokens, D_vision], as it pools
        for item in items:
            item.signals["tower_features"] = cells[item.kind_index].unsqueeze(1)

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        projector = self.projector
        normed = projector.mm_soft_emb_norm(inputs[:, 0])
        return torch.matmul(normed, projector.mm_input_projection_weight).type_as(inputs)

    def _pool_like_projector(self, per_patch: torch.Tensor) -> torch.Tensor:
        """``[images, patches]`` -> ``[images, tokens]``: the projector's row-major patch grid, average-pooled
        with its kernel and flattened row-major, so token ``t`` scores the patches that token ``t`` pools."""
        side = self.patches_per_side
        grid = per_patch.reshape(-1, 1, side, side)
        kernel = side // self.tokens_per_side
        return F.avg_pool2d(grid, kernel_size=kernel, stride=kernel).flatten(1)
