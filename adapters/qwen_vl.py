"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (``*ForConditionalGeneration``): ViT with no [CLS], dynamic grids.

The tower embeds each image (or video) as a ``(t, h, w)`` grid of patches; its patch merger turns every
``spatial_merge_size**2`` consecutive patches into one language-model token, so an item has
``t * (h / merge) * (w / merge)`` placeholder tokens, in frame-major, row-major order. Images and videos
are encoded in separate tower forwards (images first), each packing all its items into one sequence
attended chunk by chunk (``cu_seqlens``: one chunk per frame, or per window in Qwen2.5-VL's windowed blocks).

Family differences: Qwen2.5-VL runs its blocks on a window-permuted sequence; Qwen3-VL adds DeepStack
features to the hidden states of its visual positions after the first language-model layers, and
splits each video into one placeholder run per temporal step (timestamp text in between).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD
from transformers.vision_utils import get_vision_window_index

from vlmzip.adapter import Adapter, VisionRun, runs_by_kind
from vlmzip.errors import InputError, UnsupportedModelError
from vlmzip.registry import register_adapter
from vlmzip.runtime.tower_plan import PackedPlan
from vlmzip.selection import merge_rows
from vlmzip.stages import ModelInfo, VisualItem

_KINDS = ("image", "video")
_PIXEL_KEYS = {"image": "pixel_values", "video": "pixel_values_videos"}
_GRID_KEYS = {"image": "image_grid_thw", "video": "video_grid_thw"}


class QwenVLAdapter(Adapter):
    """Shared logic of the Qwen-VL families; subclasses register the model types."""

    vision_query = "mean"
    packs_vision_chunks = True  # one batched call per layer instead of one per window/frame (issue 21)

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.visual

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def vision_attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self.vision_tower.blocks]

    def placeholder_ids(self) -> dict[str, int]:
        config = self.model.config
        return {"image": config.image_token_id, "video": config.video_token_id}

    def tower_grids(self, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
        # forward(hidden_states, grid_thw, **kwargs); get_*_features pass grid_thw by keyword
        grid_thw = kwargs.get("grid_thw")
        if grid_thw is None and len(args) > 1:
            grid_thw = args[1]
        return grid_thw

    def item_grids(self, kind: str, inputs: dict[str, Any], runs: list[VisionRun]) -> list[tuple[int, int, int]]:
        grid_thw = inputs.get(_GRID_KEYS[kind])
        if grid_thw is not None:
            return self._llm_grids(grid_thw)
        if not bool((inputs["input_ids"] == self.placeholder_ids()[kind]).any()):
            return []
        return self._llm_grids(self._grids_from_runs(kind, inputs, runs))

    def _llm_grids(self, grid_thw: Any) -> list[tuple[int, int, int]]:
        """``(t, h, w)`` in language-model tokens of each row of a ``grid_thw`` (patches)."""
        merge = self.merge_size
        return [(t, h // merge, w // merge) for t, h, w in torch.as_tensor(grid_thw).tolist()]

    def _grids_from_runs(self, kind: str, inputs: dict[str, Any], runs: list[VisionRun]) -> torch.Tensor:
        """The ``grid_thw`` the tower was given for ``kind`` (``generate`` drops it from the forward)."""
        encoded = _encoded_kinds(inputs, self.placeholder_ids())
        if kind not in encoded or len(runs) != len(encoded) or runs[encoded.index(kind)].grids is None:
            raise InputError(
                f"the prompt has {kind} placeholder tokens but vlmzip cannot tell their {_GRID_KEYS[kind]}: pass "
                f"{_PIXEL_KEYS[kind]} with {_GRID_KEYS[kind]} (as the processor returns them), not precomputed "
                "encoder outputs"
            )
        return runs[encoded.index(kind)].grids

    # -- vision-attention scores --------------------------------------------------------------------------
    def vision_scores(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        for run, encoded, of_kind in self._runs_of_kinds(runs, items, "score them by vision attention"):
            per_item = self._token_scores(run).split([t * h * w for t, h, w in encoded])
            for item in of_kind:
                item.signals["vision_attention"] = per_item[item.kind_index].to(item.positions.device)

    def _runs_of_kinds(self, runs: list[VisionRun], items: list[VisualItem], purpose: str):
        """``(run, its items' grids, the request's items it encoded)`` per kind present: the tower runs images
        first, then videos, so each kind pairs with the next run; the runtime has pointed each item's
        kind_index at its row in that run (generate's sample copies share one)."""
        for kind, run in runs_by_kind(runs, items, _KINDS).items():
            of_kind = [item for item in items if item.kind == kind]
            encoded = self._llm_grids(run.grids) if run is not None and run.grids is not None else []
            if any(item.kind_index >= len(encoded) or encoded[item.kind_index] != item.grid for item in of_kind):
                raise InputError(
                    f"vlmzip saw no vision-tower forward for this request's {kind}s, so it cannot {purpose}: "
                    f"pass {_PIXEL_KEYS[kind]} (not precomputed encoder outputs)"
                )
            yield run, encoded, of_kind

    # -- pruning inside the tower: its blocks run on the kept merge units' patches ------------------------------
    tower_cut = True

    def tower_layers(self) -> nn.ModuleList:
        return self.vision_tower.blocks

    def tower_plan(self, hidden: torch.Tensor, run: VisionRun) -> PackedPlan:
        grid_thw = torch.as_tensor(run.grids).cpu()
        return PackedPlan(self._llm_grids(grid_thw), self.merge_size**2, self._tower_order(grid_thw))

    def tower_outputs(self) -> list[nn.Module]:
        # the patch merger, and Qwen3-VL's DeepStack mergers of the later layers
        return [self.vision_tower.merger, *getattr(self.vision_tower, "deepstack_merger_list", [])]

    def encoded_by(self, runs: list[VisionRun], items: list[VisualItem]) -> list[tuple[VisionRun | None, int]]:
        run_of = runs_by_kind(runs, items, _KINDS)
        return [(run_of[item.kind], item.kind_index) for item in items]

    # -- the projector (the patch merger) --------------------------------------------------------------------
    @property
    def projector(self) -> nn.Module:
        return self.vision_tower.merger

    def tower_features(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        # a token is the merger's output for one merge unit of spatial_merge_size**2 consecutive patches
        unit = self.merge_size**2
        for run, encoded, of_kind in self._runs_of_kinds(runs, items, "read their projector inputs"):
            patches = torch.cat(run.projector_inputs)
            tokens = patches.view(-1, unit, patches.shape[-1])
            order = self._tower_order(torch.as_tensor(run.grids).cpu())
            if order is not None:  # the merger saw units in the blocks' (window) order: back to token order
                tokens = tokens[order.argsort().to(tokens.device)]
            per_item = tokens.split([t * h * w for t, h, w in encoded])
            for item in of_kind:
                item.signals["tower_features"] = per_item[item.kind_index]

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.projector(inputs.reshape(-1, inputs.shape[-1]))

    def images(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        # the tower's input is the processor's patch rows (t, h/m, w/m, m, m) x columns (C, tp, p, p): put the
        # patches back in place, each temporal patch's tp frames in order
        vision = self.model.config.vision_config
        p, m, tp = vision.patch_size, self.merge_size, vision.temporal_patch_size
        for run, _, of_kind in self._runs_of_kinds(runs, items, "read their pixels"):
            if run.pixels is None:
                raise InputError("vlmzip saw no pixels for this request's vision-tower forward: pass pixel_values")
            grid_thw = torch.as_tensor(run.grids).tolist()
            per_item = run.pixels.split([t * h * w for t, h, w in grid_thw])
            for item in of_kind:
                (t, h, w), rows = grid_thw[item.kind_index], per_item[item.kind_index]
                frames = rows.view(t, h // m, w // m, m, m, -1, tp, p, p).permute(0, 6, 5, 1, 3, 7, 2, 4, 8)
                item.signals["image"] = self.unnormalise(frames.reshape(t * tp, -1, h * p, w * p))

    def _token_scores(self, run: VisionRun) -> torch.Tensor:
        """Mean attention each language-model token's patches receive from its item's patches, summed
        over the captured layers: ``[tokens of the run]`` in the order of the merger's output.

        Each attention call covers one chunk (frame or window) and its mass sums to 1 over the chunk;
        weighting it by the chunk's length and dividing by the item's patch count makes it the mean over
        all the item's queries (a query in another chunk gives 0), so small edge windows are not inflated.
        """
        grid_thw = torch.as_tensor(run.grids).cpu()
        patches_per_item = grid_thw.prod(dim=-1)
        total = int(patches_per_item.sum())
        layers = []
        for layer, chunks in run.attention.items():
            received = torch.cat([chunk.sum(dim=0).float() * chunk.shape[-1] for chunk in chunks])
            if received.numel() != total:
                raise UnsupportedModelError(
                    f"vision layer {layer}'s captured attention covers {received.numel()} patches, but the tower's "
                    f"grid_thw gives {total}; this Qwen-VL tower attends in a way vlmzip does not know"
                )
            layers.append(received)
        if not layers:
            return torch.zeros(total // self.merge_size**2)
        per_patch = torch.stack(layers).sum(dim=0)
        order = self._tower_order(grid_thw)
        unit = self.merge_size**2
        if order is not None:  # the blocks saw merge units permuted by `order`: put patches back first
            per_patch = per_patch.view(-1, unit)[order.argsort().to(per_patch.device)].flatten()
        item_sizes = patches_per_item.repeat_interleave(patches_per_item).to(per_patch.device)
        return (per_patch / item_sizes).view(-1, unit).sum(dim=-1)

    def _tower_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        """Order of merge units in the sequence the tower blocks attend over (``None``: natural order)."""
        return None

    # -- decoding -------------------------------------------------------------------------------------------
    def decode_position_ids(self, kwargs: dict[str, Any], cache: Any) -> torch.Tensor | None:
        # the stock model continues M-RoPE from the 2D mask's cumsum plus the rope deltas of the prompt
        # (the text position each token would have, shifted by how much the visual grids compressed it)
        mask = kwargs.get("attention_mask")
        deltas = getattr(self.model.model, "rope_deltas", None)
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or deltas is None:
            return None
        new = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        batch, length = new.shape[0], new.shape[1]
        if batch % deltas.shape[0]:  # deltas of an earlier request (this prompt had no images or videos)
            return None
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, -length:]
        deltas = deltas.repeat_interleave(batch // deltas.shape[0], dim=0).to(positions.device)
        return (positions + deltas).unsqueeze(0).expand(3, -1, -1).to(new.device)


@register_adapter
class Qwen2VLAdapter(QwenVLAdapter):
    model_types = ("qwen2_vl",)
    family = "Qwen2-VL"
    notes = "images and videos; M-RoPE positions kept"


@register_adapter
class Qwen2_5_VLAdapter(QwenVLAdapter):  # noqa: N801 (named like the model class)
    model_types = ("qwen2_5_vl",)
    family = "Qwen2.5-VL"
    notes = "images and videos; M-RoPE positions kept; windowed vision attention un-permuted for scores"

    def _tower_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        vision = self.model.config.vision_config
        window_index, _ = get_vision_window_index(
            grid_thw.cpu(),
            spatial_merge_size=vision.spatial_merge_size,
            window_size=vision.window_size,
            patch_size=vision.patch_size,
        )
        return window_index


@register_adapter
class Qwen3VLAdapter(QwenVLAdapter):
    model_types = ("qwen3_vl",)
    family = "Qwen3-VL"
    image_mean, image_std = tuple(IMAGENET_STANDARD_MEAN), tuple(IMAGENET_STANDARD_STD)
    notes = "images and videos; M-RoPE positions kept; DeepStack features cut (and merged) with the visual rows"

    def model_info(self) -> ModelInfo:
        # DeepStack adds features to the visual rows after layers 0..n-1: a prefill cut must come later
        deepstack = len(self.model.config.vision_config.deepstack_visual_indexes)
        return dataclasses.replace(super().model_info(), min_prefill_layer=max(1, deepstack))

    def cut_language_model_inputs(
        self, kwargs: dict[str, Any], keep: torch.Tensor, owner: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
    ) -> None:
        visual = kwargs.get("visual_pos_masks")
        if visual is None:
            return
        visual = visual.to(keep.device)
        embeds: Sequence[torch.Tensor] | None = kwargs.get("deepstack_visual_embeds")
        if embeds is not None:
            # DeepStack rows follow the visual positions in row-major order; each kept row takes the mean of
            # the rows it carries (itself alone unless the vision method merged tokens into it)
            survivors = visual & keep
            ordinal = torch.full_like(owner, -1)
            ordinal[survivors] = torch.arange(int(survivors.sum()), device=owner.device)
            target = torch.where(owner >= 0, ordinal.gather(1, owner.clamp(min=0)), -1)[visual]
            kwargs["deepstack_visual_embeds"] = [merge_rows(rows, target, int(survivors.sum())) for rows in embeds]
        kwargs["visual_pos_masks"] = visual.gather(1, index) & valid


def _encoded_kinds(inputs: dict[str, Any], placeholder_ids: dict[str, int]) -> list[str]:
    """The kinds the tower encoded for this request, in the order it encoded them (images first).

    A forward given pixels encodes those kinds itself; otherwise ``generate`` encoded, before the
    forward, every kind whose placeholders the prompt holds.
    """
    own = [kind for kind in _KINDS if inputs.get(_PIXEL_KEYS[kind]) is not None]
    if own:
        return own
    input_ids = inputs["input_ids"]
    return [kind for kind in _KINDS if bool((input_ids == placeholder_ids[kind]).any())]
