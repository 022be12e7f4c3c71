"""What vlmzip needs to know about a model family, implemented once per family in ``vlmzip.adapters``.

An adapter locates the language model, its decoder layers and the vision tower's attention modules;
finds each image's or video's placeholder tokens in ``input_ids``; and maps vision-tower attention to
language-model tokens. Everything else (hooks, cutting, masks, cache) is family-independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from vlmzip.errors import InputError
from vlmzip.methods.base import ModelInfo, VisualItem


@dataclass
class VisionRun:
    """One forward of the vision tower: what it was given and the attention vlmzip captured in it.

    ``grids`` is what the adapter's ``tower_grids`` read from the tower's arguments (Qwen: ``grid_thw``);
    ``attention`` maps a tower layer to the per-key attention mass of each of its attention calls,
    ``[batch, keys]`` tensors (several calls when the tower packs images into chunks).
    """

    grids: Any = None
    count: int = 0  # images (or videos) the forward encoded
    attention: dict[int, list[torch.Tensor]] = field(default_factory=dict)


class Adapter:
    """Base adapter. Subclasses set ``model_types`` and implement the abstract members below."""

    model_types: ClassVar[tuple[str, ...]] = ()
    #: "cls": the tower has a [CLS] token whose attention row scores patches; "mean": use the mean
    #: attention each patch receives
    vision_query: ClassVar[Literal["cls", "mean"]] = "mean"
    #: name of the vision sub-config (for ``set_attn_implementation``)
    vision_config_key: ClassVar[str] = "vision_config"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # -- structure ------------------------------------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        """The decoder stack that receives ``inputs_embeds`` (e.g. ``LlamaModel``)."""
        return self.model.model.language_model

    @property
    def decoder_layers(self) -> Sequence[nn.Module]:
        return self.language_model.layers

    @property
    def text_config(self) -> Any:
        return self.model.config.get_text_config(decoder=True)

    @property
    def vision_tower(self) -> nn.Module:
        raise NotImplementedError

    def vision_attention_modules(self) -> list[nn.Module]:
        """The vision tower's self-attention modules, in layer order."""
        raise NotImplementedError

    def model_info(self) -> ModelInfo:
        return ModelInfo(num_layers=len(self.decoder_layers), vision_layers=len(self.vision_attention_modules()))

    # -- requests ---------------------------------------------------------------------------------------
    def placeholder_ids(self) -> dict[str, int]:
        """Placeholder token id per item kind, e.g. ``{"image": 32000}``."""
        raise NotImplementedError

    def tower_grids(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What a vision-tower forward tells about the layout of its items (default: nothing)."""
        return None

    def tower_count(self, args: tuple, kwargs: dict[str, Any]) -> int:
        """How many images (or videos) a vision-tower forward encodes: its grids, else its pixel batch."""
        grids = self.tower_grids(args, kwargs)
        if grids is not None:
            return len(grids)
        pixels = args[0] if args else kwargs.get("pixel_values")
        return int(pixels.shape[0]) if pixels is not None else 0

    def item_grids(self, kind: str, inputs: dict[str, Any], runs: list[VisionRun]) -> list[tuple[int, int, int]]:
        """``(frames, rows, cols)`` in language-model tokens of each ``kind`` item, in batch order.

        ``inputs`` are the model's forward arguments; ``runs`` the vision-tower forwards of this request
        (``generate`` encodes images before the first forward and drops the pixel arguments from it).
        """
        raise NotImplementedError

    def visual_items(self, inputs: dict[str, Any], runs: list[VisionRun]) -> list[VisualItem]:
        """Every image and video of the batch with its placeholder positions, validated against the inputs."""
        input_ids = inputs["input_ids"]
        items: list[VisualItem] = []
        for kind, token_id in self.placeholder_ids().items():
            rows, cols = (input_ids == token_id).nonzero(as_tuple=True)
            grids = self.item_grids(kind, inputs, runs)
            sizes = [t * h * w for t, h, w in grids]
            if sum(sizes) != rows.numel():
                raise InputError(
                    f"the prompt has {rows.numel()} {kind} placeholder tokens but the {kind} inputs give "
                    f"{len(sizes)} {kind}(s) with {sum(sizes)} tokens; each {kind} needs exactly as many "
                    "placeholders as it has features (build inputs with the model's processor)"
                )
            start = 0
            for kind_index, (grid, size) in enumerate(zip(grids, sizes)):
                sample = rows[start : start + size]
                if bool((sample != sample[0]).any()):
                    raise InputError(f"the placeholder tokens of one {kind} span two samples of the batch")
                items.append(VisualItem(int(sample[0]), -1, kind, cols[start : start + size], grid, kind_index))
                start += size
        items.sort(key=lambda item: (item.sample, int(item.positions[0])))
        per_sample: dict[int, int] = {}
        for index, item in enumerate(items):
            item.index, item.sample_index = index, per_sample.get(item.sample, 0)
            per_sample[item.sample] = item.sample_index + 1
        return items

    def vision_scores(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        """Set ``item.scores["vision_attention"]`` (one value per language-model token) for every item,
        from the attention captured in the vision-tower forwards of this request (images, then videos)."""
        raise NotImplementedError

    def cut_language_model_inputs(
        self, kwargs: dict[str, Any], keep: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
    ) -> None:
        """Cut family-specific language-model inputs indexed by sequence position (default: none).

        ``keep [B, L]`` marks kept rows of the original sequence; ``index``/``valid [B, L']`` pack them.
        """

    def decode_position_ids(self, kwargs: dict[str, Any], cache: Any) -> torch.Tensor | None:
        """Position ids the model would compute itself for a decode step (when the caller gave none).

        vlmzip hides the 2D attention mask from the model during decoding (each layer gets its own mask),
        so families that derive positions from that mask compute them here. Default: ``None`` (the model
        counts from the cache's logical length, as it would anyway).
        """
        return None
