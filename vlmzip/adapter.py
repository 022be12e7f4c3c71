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
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from vlmzip.errors import InputError
from vlmzip.runtime.tower_plan import StackedPlan, TowerPlan
from vlmzip.stages import ModelInfo, VisualItem


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
    #: what the projector was given for these items (recorded only for methods that need "tower_features")
    projector_inputs: list[torch.Tensor] = field(default_factory=list)
    #: the tower's pixel input (recorded only for methods that need "image")
    pixels: torch.Tensor | None = None
    #: kept token indices of each item, where a vision method chose inside the tower (``runtime.tower``)
    choices: list[torch.Tensor] | None = None


@dataclass(frozen=True)
class Part:
    """One item in an encoded run of placeholders: its ``(frames, rows, cols)`` layout in language-model tokens, the
    offsets of its tokens in the run (``None``: the whole run) and ``view``, what the adapter needs to find its tokens
    in the tower's output (``VisualItem.view``)."""

    grid: tuple[int, int, int]
    offsets: torch.Tensor | None = None
    view: Any = None


@dataclass(frozen=True)
class Placement:
    """One encoded image's (or video's) run of ``length`` placeholder tokens and the items it holds. A placeholder
    that no part holds is a layout token (LLaVA-NeXT's ``image_newline`` at the end of each row), kept as text."""

    length: int
    parts: tuple[Part, ...]


class Adapter:
    """Base adapter. Subclasses set ``model_types`` and implement the abstract members below."""

    model_types: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""  # as users name it ("LLaVA-1.5"); with ``notes``, the README's model table
    notes: ClassVar[str] = ""
    #: "cls": the tower has a [CLS] token whose attention row scores patches; "mean": use the mean
    #: attention each patch receives
    vision_query: ClassVar[Literal["cls", "mean"]] = "mean"
    #: name of the vision sub-config (for ``set_attn_implementation``)
    vision_config_key: ClassVar[str] = "vision_config"
    #: the tower packs its items into one sequence split by ``cu_seqlens``, calling a ``sdpa``/``eager`` backend
    #: once per chunk and an implementation whose name holds "flash" once with ``cu_seq_lens_q`` (Qwen-VL): under
    #: ``compress`` vlmzip then runs the chunks batched (``runtime.attention.PackedChunks``)
    packs_vision_chunks: ClassVar[bool] = False
    #: the per-channel mean and std the family's image processor normalises pixels with (its defaults), undone by
    #: ``images`` so that a method reads plain RGB
    image_mean: ClassVar[tuple[float, ...]] = tuple(OPENAI_CLIP_MEAN)
    image_std: ClassVar[tuple[float, ...]] = tuple(OPENAI_CLIP_STD)

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
        return ModelInfo(
            num_layers=len(self.decoder_layers),
            vision_layers=len(self.vision_attention_modules()),
            tower_cut=self.tower_cut,
            head_dim=_head_dim(self.text_config),
            context=getattr(self.text_config, "max_position_embeddings", 0) or 0,
            model_type=getattr(self.model.config, "model_type", "") or "",
            heads=getattr(self.text_config, "num_attention_heads", 0) or 0,
            kv_heads=getattr(self.text_config, "num_key_value_heads", None)
            or getattr(self.text_config, "num_attention_heads", 0)
            or 0,
        )

    # -- pruning inside the tower (a vision method's ``tower_layer``; runtime.tower) --------------------------
    #: whether the tower can run its later layers on some patches (``tower_layers`` and ``tower_plan``)
    tower_cut: bool = False

    def tower_layers(self) -> nn.ModuleList:
        """The vision tower's encoder layers, whose first argument is the hidden states."""
        raise NotImplementedError

    def tower_plan(self, hidden: torch.Tensor, run: VisionRun) -> TowerPlan:
        """How the tower forward ``run``, now at ``hidden``, maps rows to tokens .
        Default: a tower of ``[images, rows, D]`` layers (``StackedPlan``) through the three members below."""
        return StackedPlan(self.tower_grid(), hidden.shape[0], self.tower_tokens, self.tower_rows)

    def tower_outputs(self) -> list[nn.Module]:
        """Modules whose outputs return to full length after a cut inside the tower (default: the tower)."""
        return [self.vision_tower]

    def tower_grid(self) -> tuple[int, int, int]:
        """``(frames, rows, cols)`` in language-model tokens of every image a stacked tower encodes."""
        raise NotImplementedError

    def tower_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """Stacked tower hidden states ``[images, rows, D]`` pooled to language-model tokens ``[images, n, D]``."""
        raise NotImplementedError

    def tower_rows(self, keep: torch.Tensor) -> torch.Tensor:
        """The stacked tower rows ``[images, rows']`` (ascending) that kept tokens ``keep [images, k]`` need."""
        raise NotImplementedError

    def encoded_by(self, runs: list[VisionRun], items: list[VisualItem]) -> list[tuple[VisionRun, int]]:
        """The tower forward that encoded each item and the item's row in it. Default: one kind of item, each
        item's ``kind_index`` counting over the forwards in order."""
        rows = [(run, row) for run in runs for row in range(run.count)]
        return [rows[item.kind_index] if item.kind_index < len(rows) else (None, 0) for item in items]

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
        """``(frames, rows, cols)`` in language-model tokens of each ``kind`` item the vision tower encoded for
        this request, in batch order.

        ``inputs`` are the model's forward arguments; ``runs`` the vision-tower forwards of this request
        (``generate`` encodes images before the first forward and drops the pixel arguments from it). The
        prompt may hold each sample's items several times over (``generate``'s repetition): ``visual_items``
        accounts for that.
        """
        raise NotImplementedError

    def encoded_count(self, inputs: dict[str, Any], runs: list[VisionRun], tokens_per_item: int) -> int:
        """How many images a family of fixed-size items encoded for this request: its pixel batch, else what
        the tower's forwards of this request encoded, else (features passed precomputed) what the placeholders
        hold."""
        pixel_values = inputs.get("pixel_values")
        if pixel_values is not None:
            return int(pixel_values.shape[0])
        placeholders = int((inputs["input_ids"] == self.placeholder_ids()["image"]).sum())
        encoded = sum(run.count for run in runs)
        if encoded and placeholders and placeholders % (encoded * tokens_per_item) == 0:
            return encoded
        return placeholders // tokens_per_item

    def placements(self, kind: str, inputs: dict[str, Any], runs: list[VisionRun]) -> list[Placement]:
        """How each ``kind`` item the vision tower encoded for this request lies in its run of placeholder tokens, in
        batch order. Default: one item per run, every placeholder one of its tokens (``item_grids``)."""
        return [Placement(t * h * w, (Part((t, h, w)),)) for t, h, w in self.item_grids(kind, inputs, runs)]

    def visual_items(self, inputs: dict[str, Any], runs: list[VisionRun]) -> list[VisualItem]:
        """Every image and video of the batch with its placeholder positions, validated against the inputs."""
        input_ids = inputs["input_ids"]
        items: list[VisualItem] = []
        for kind, token_id in self.placeholder_ids().items():
            rows, cols = (input_ids == token_id).nonzero(as_tuple=True)
            encoded = self.placements(kind, inputs, runs)
            counts = (input_ids == token_id).sum(dim=1).tolist() if encoded else []
            sources = repeat_like_generate([placement.length for placement in encoded], counts)
            placed = [encoded[source] for source in sources]
            if sum(placement.length for placement in placed) != rows.numel():
                raise InputError(
                    f"the prompt has {rows.numel()} {kind} placeholder tokens but the {kind} inputs give "
                    f"{len(placed)} {kind}(s) with {sum(p.length for p in placed)} tokens; each {kind} needs exactly "
                    "as many placeholders as it has features (build inputs with the model's processor)"
                )
            first_part = [0]  # each encoded run's first item among the encoded items of its kind
            for placement in encoded:
                first_part.append(first_part[-1] + len(placement.parts))
            start = 0
            for placement, source in zip(placed, sources):
                sample, run = rows[start : start + placement.length], cols[start : start + placement.length]
                if bool((sample != sample[0]).any()):
                    raise InputError(f"the placeholder tokens of one {kind} span two samples of the batch")
                for offset, part in enumerate(placement.parts):
                    positions = run if part.offsets is None else run[part.offsets.to(run.device)]
                    index = first_part[source] + offset
                    items.append(VisualItem(int(sample[0]), -1, kind, positions, part.grid, index, view=part.view))
                start += placement.length
        items.sort(key=lambda item: (item.sample, int(item.positions[0])))
        per_sample: dict[int, int] = {}
        for index, item in enumerate(items):
            item.index, item.sample_index = index, per_sample.get(item.sample, 0)
            per_sample[item.sample] = item.sample_index + 1
        return items

    def vision_scores(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        """Set ``item.signals["vision_attention"]`` (one value per language-model token) for every item, from
        the attention captured in the vision-tower forwards of this request (images, then videos); an item's
        ``kind_index`` is its row among the encoded items of its kind."""
        raise NotImplementedError

    def images(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        """Set ``item.signals["image"]`` (``[F, 3, H, W]`` in ``[0, 1]``: the frames the tower saw, un-normalised)
        from the pixels the tower forwards of ``runs`` were given. Default: a tower of ``[images, 3, H, W]`` inputs,
        one frame per item."""
        pixels = [run.pixels for run in runs]
        if any(p is None for p in pixels) or sum(run.count for run in runs) <= max(i.kind_index for i in items):
            raise InputError(
                "vlmzip saw no vision-tower forward given this request's pixels, so it cannot read its images: pass "
                "pixel_values (not precomputed image features)"
            )
        images = self.unnormalise(torch.cat(pixels))
        for item in items:
            item.signals["image"] = images[item.kind_index].unsqueeze(0)

    def unnormalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[..., 3, H, W]`` normalised as the family's processor does, back to ``[0, 1]`` RGB (fp32)."""
        mean = pixels.new_tensor(self.image_mean, dtype=torch.float32)[:, None, None]
        std = pixels.new_tensor(self.image_std, dtype=torch.float32)[:, None, None]
        return (pixels.float() * std + mean).clamp(0, 1)

    # -- the projector -------------------------------------------------------------------------------------
    @property
    def projector(self) -> nn.Module:
        """The module that turns vision-tower outputs into language-model tokens; its input is recorded for
        ``tower_features``."""
        return self.model.model.multi_modal_projector

    def tower_features(self, runs: list[VisionRun], items: list[VisualItem]) -> None:
        """Set ``item.signals["tower_features"]`` (``[n, U, D_vision]``: the ``U`` projector-input vectors each
        of the item's ``n`` tokens is made from, in token order) from the projector inputs of ``runs``."""
        raise NotImplementedError(f"{type(self).__name__} does not provide tower_features")

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        """The projector on ``inputs [m, U, D_vision]`` (as ``tower_features`` gives them): ``[m, D]``."""
        raise NotImplementedError(f"{type(self).__name__} does not provide project")

    def cut_language_model_inputs(
        self, kwargs: dict[str, Any], keep: torch.Tensor, owner: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
    ) -> None:
        """Cut family-specific language-model inputs indexed by sequence position (default: none).

        ``keep [B, L]`` marks kept rows of the original sequence; ``owner [B, L]`` gives, for every row, the
        kept row that now carries its content (itself if kept unmerged; ``-1``: dropped), so inputs attached to
        tokens can be merged like the tokens were; ``index``/``valid [B, L']`` pack the kept rows.
        """

    def decode_position_ids(self, kwargs: dict[str, Any], cache: Any) -> torch.Tensor | None:
        """Position ids the model would compute itself for a decode step (when the caller gave none).

        vlmzip hides the 2D attention mask from the model during decoding (each layer gets its own mask),
        so families that derive positions from that mask compute them here. Default: ``None`` (the model
        counts from the cache's logical length, as it would anyway).
        """
        return None


def repeat_like_generate(sizes: list[int], counts: list[int]) -> list[int]:
    """The encoded item each item of the prompt is, in batch order, given the encoded items' placeholder counts
    ``sizes`` and each sample's placeholder count.

    ``generate`` encodes the batch's images once, then repeats every sample ``k`` times in place (beam search,
    ``num_return_sequences``): the prompt then holds ``k`` copies of each sample's items, copy ``j`` of sample
    ``s`` being sample ``s * k + j``. This is the one place that knows it. Sizes that do not line up with the
    samples are taken as they are, for ``visual_items`` to report.
    """
    unchanged = list(range(len(sizes)))
    tokens, placeholders = sum(sizes), sum(counts)
    if tokens == 0 or placeholders <= tokens or placeholders % tokens or len(counts) % (placeholders // tokens):
        return unchanged
    copies = placeholders // tokens
    if any(count != counts[row - row % copies] for row, count in enumerate(counts)):
        return unchanged
    per_sample: list[list[int]] = []  # the encoded items of each original sample
    remaining = iter(range(len(sizes)))
    for count in counts[::copies]:
        mine: list[int] = []
        while sum(sizes[i] for i in mine) < count and (item := next(remaining, None)) is not None:
            mine.append(item)
        per_sample.append(mine)
    if next(remaining, None) is not None or [sum(sizes[i] for i in m) for m in per_sample] != counts[::copies]:
        return unchanged
    return [item for mine in per_sample for _ in range(copies) for item in mine]


def runs_by_kind(runs: list[VisionRun], items: list[VisualItem], kinds: Sequence[str]) -> dict[str, VisionRun | None]:
    """The tower forward of each kind the items hold: the tower encodes the kinds in the order ``kinds`` lists them
    (images, then videos), one forward each, so each kind present pairs with the next forward."""
    pending = iter(runs)
    return {kind: next(pending, None) for kind in kinds if any(item.kind == kind for item in items)}


def summed_attention(run: VisionRun) -> torch.Tensor:
    """``[rows, keys]``: the attention mass captured in ``run``, per tower row (image, crop or frame), summed over
    the captured layers (a stacked tower calls attention once per layer on all its rows)."""
    return sum(torch.cat(chunks) for chunks in run.attention.values())


def _head_dim(config) -> int:
    """Channels of one attention head of a text config (``head_dim``, or the hidden size split over the heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
