"""The vision-stage contract: choose or merge each image's (or video's) tokens before the language model.

The runtime hands a method the ``VisualItem``s of a request (each one's token embeddings as the language model
would receive them, its layout, and the signals the method asked for in ``needs``) and receives a
``VisualSelection`` per item: which of the item's tokens survive, and optionally new embeddings for them
(merging). A method decides one item at a time (``score`` or ``select``) or all of them at once
(``select_batch``, for choices that cost a small computation per kept token).
Everything indexed by sequence position (ids, masks, position ids, family extras) is then cut by the
runtime; a method never touches a model input.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from vlmzip.budget import Keep, kept_count
from vlmzip.errors import PolicyError, UnsupportedModelError
from vlmzip.selection import ascending
from vlmzip.stages.method import Method, ModelInfo, Stage, stage_option

#: signals the runtime can compute for a vision method, by the name a method lists in ``needs``
SIGNALS = frozenset({"vision_attention", "text_embeddings", "tower_features", "pixels", "text", "image"})


@dataclass
class VisualItem:
    """One image or video of one sample, as the vision stage sees it.

    ``positions`` are the sequence indices of its placeholder tokens in prompt order; ``grid`` is its
    ``(frames, rows, cols)`` layout in language-model tokens; ``features`` are its token embeddings as the
    language model would receive them, ``[n, D]``; ``signals`` holds what the method asked for in ``needs``:
    ``"vision_attention"`` (``[n]``: [CLS] attention, or the mean attention a token's patches receive) and
    ``"text_embeddings"`` (``[T, D]``: the embeddings of the sample's text tokens, e.g. its question) and
    ``"tower_features"`` (``[n, U, D_vision]``: what the projector turns into each token, its ``U`` vision-tower
    vectors) and, inside the tower only, ``"pixels"`` (``[n, U, P]``: the pixel values of each token's ``U``
    patches as the tower receives them, normalised) and ``"text"`` (``str``: the sample's question, its text after
    its last visual token decoded by the model's tokenizer, special tokens skipped) and ``"image"``
    (``[F, 3, H, W]``: the item's ``F`` frames as the tower saw them, un-normalised to ``[0, 1]`` RGB; token
    ``(t, r, c)`` of the ``grid`` covers the ``r``-th of ``rows`` equal bands of height and the ``c``-th of
    ``cols`` equal bands of width, in frames ``t * F / frames`` onwards). ``project`` is the model's projector on
    such inputs: ``[m, U, D_vision] -> [m, D]``, so ``project(signals["tower_features"])`` gives ``features`` again
    (within rounding).
    """

    sample: int
    index: int  # order of the item in the request (row-major over samples)
    kind: Literal["image", "video"]
    positions: torch.Tensor
    grid: tuple[int, int, int]
    kind_index: int = 0  # the vision-tower output it came from, among the encoded items of its kind
    sample_index: int = 0  # order among the items of its sample
    features: torch.Tensor | None = None
    signals: dict[str, Any] = dataclasses.field(default_factory=dict)  # tensors, but "text" is a str
    project: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: the images this video is made of, when a video-only method reads a sample's images as its frames
    frames: list[VisualItem] | None = None
    #: where the adapter finds the item's tokens in the tower's output, beyond ``kind_index`` (LLaVA-NeXT: the crops
    #: and the unpadding of an image's high-resolution view); ``None`` for families whose items are whole outputs
    view: Any = None

    @property
    def num_tokens(self) -> int:
        return int(self.positions.numel())


@dataclass
class VisualSelection:
    """What remains of one item: ``keep`` (ascending local indices, ``[k]``) are the tokens whose places
    (sequence position, position ids, masks) the survivors take.

    ``embeddings [k, D]``, when given, replace the kept tokens' embeddings (merged tokens); ``sources [n]``
    then maps every original token to the survivor that stands for it (``-1``: dropped), so family inputs
    attached to each token (Qwen3-VL's DeepStack features) are merged alike, by the mean over each
    survivor's sources. Merged tokens count as kept. ``protected`` (a subset of ``keep``, local indices), when
    given, are tokens later stages must not drop (MustDrop's key set): a prefill cut keeps them beside its choice.
    """

    keep: torch.Tensor
    embeddings: torch.Tensor | None = None
    sources: torch.Tensor | None = None
    protected: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.keep.dim() != 1 or self.keep.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"VisualSelection.keep must be a 1-D integer tensor, got {tuple(self.keep.shape)}")
        if self.embeddings is not None:
            if self.sources is None or self.embeddings.shape[0] != self.keep.numel():
                raise ValueError(
                    "merged VisualSelection: embeddings need one row per kept token and sources mapping every "
                    f"original token to its survivor (got {self.embeddings.shape[0]} rows for "
                    f"{self.keep.numel()} kept tokens, sources={'missing' if self.sources is None else 'given'})"
                )
        elif self.sources is not None:
            raise ValueError("VisualSelection.sources describes merged tokens: give their embeddings too")

    @property
    def merged(self) -> bool:
        return self.embeddings is not None


@dataclass(frozen=True)
class VisionMethod(Method):
    """Keeps (or merges into) a subset of each image's (or video's) tokens before the language model sees them.

    ``keep`` is a fraction of each item's tokens or a token count per item. Override one step: ``score`` (most
    methods: the base class keeps the top ``keep``), ``select`` (any other choice of one item, merging), or
    ``select_batch`` (a choice made for all the items at once: greedy ones that take a step per kept token).

    ``at_layer=L`` (> 0) chooses before vision-tower layer ``L`` instead of after the tower: the remaining tower
    layers run on the kept tokens' patches only. The item's ``features`` are then the tower's hidden states
    pooled to language-model tokens, ``vision_attention`` sums layers before ``L``, ``positions`` are the token
    indices within the item, and ``select`` may not merge. A method that always chooses in the tower (before it,
    from ``pixels``) overrides ``tower_layer``.
    """

    stage: ClassVar[Stage] = "vision"
    #: signals the method reads from ``item.signals`` (a subset of ``SIGNALS``)
    needs: ClassVar[frozenset[str]] = frozenset()
    #: the kinds of item the method prunes; the runtime refuses a request holding any other kind (``InputError``)
    #: rather than pass it through whole, which would break ``keep``'s count (a video method on an image)
    media: ClassVar[frozenset[str]] = frozenset({"image", "video"})
    #: signals that exist inside the tower, where ``at_layer`` chooses
    TOWER_SIGNALS: ClassVar[frozenset[str]] = frozenset({"vision_attention", "pixels"})
    keep: Keep = 64
    at_layer: int = stage_option(0)

    @property
    def tower_layer(self) -> int | None:
        """The vision-tower layer before which the method chooses (0: before the tower), ``None`` for after it."""
        return self.at_layer or None

    def vision_layers(self, info: ModelInfo) -> list[int]:
        """Vision-tower layers whose attention the method reads (``needs`` has ``"vision_attention"``): every
        layer before the choice."""
        last = info.vision_layers if self.tower_layer is None else self.tower_layer
        return list(range(last)) if "vision_attention" in self.needs else []

    def check_model(self, info: ModelInfo) -> None:
        if self.tower_layer is not None:
            self._check_tower_layer(info)
        elif "pixels" in self.needs:
            raise PolicyError(f"{self.name}: reads pixels, which exist only inside the tower: set at_layer")
        unknown = self.needs - SIGNALS
        if unknown:
            raise UnsupportedModelError(
                f"{self.name}: needs unknown signal(s) {sorted(unknown)}; the runtime provides {sorted(SIGNALS)}"
            )
        if "vision_attention" in self.needs and not self.vision_layers(info):
            raise UnsupportedModelError(
                f"{self.name}: this model's visual features come from before its vision tower's first attention "
                "layer (e.g. a LLaVA vision_feature_layer naming the embeddings), so there is no attention to rank "
                "tokens by; use a method that needs none (random, uniform, fastv)"
            )

    def _check_tower_layer(self, info: ModelInfo) -> None:
        if not info.tower_cut:
            raise UnsupportedModelError(
                f"{self.name}: this family's vision tower cannot be pruned inside (layer {self.tower_layer}); "
                "use at_layer=0 (after the tower)"
            )
        if self.at_layer and not 0 < self.at_layer < info.vision_layers:
            raise PolicyError(
                f"{self.name}: at_layer={self.at_layer} is not inside the vision tower; this model's features come "
                f"from {info.vision_layers} tower layers: use 1..{info.vision_layers - 1}, or 0 for after the tower"
            )
        if self.needs - self.TOWER_SIGNALS:
            raise PolicyError(
                f"{self.name}: needs {sorted(self.needs - self.TOWER_SIGNALS)}, which exist only after the tower; "
                "drop at_layer"
            )

    def budget(self, item: VisualItem) -> int:
        """How many tokens of ``item`` survive."""
        return kept_count(self.keep, item.num_tokens)

    def score(self, item: VisualItem) -> torch.Tensor:
        """Importance of each of ``item``'s tokens, ``[n]``: higher is kept first."""
        raise NotImplementedError(f"{type(self).__name__} must override score() or select()")

    def select(self, item: VisualItem) -> VisualSelection:
        """The item's surviving tokens: by default the ``budget`` highest ``score``s, in their original order (a
        method that overrides ``select_batch`` instead: its choice for ``item`` alone)."""
        if type(self).select_batch is not VisionMethod.select_batch:
            return self.select_batch([item])[0]
        count = self.budget(item)
        if count == item.num_tokens:
            return VisualSelection(torch.arange(count))
        scores = self.score(item).float().cpu()
        return VisualSelection(scores.argsort(descending=True, stable=True)[:count].sort().values)

    def select_batch(self, items: list[VisualItem]) -> list[VisualSelection]:
        """Every item's surviving tokens, in the items' order: by default ``select`` on each. The runtime calls this
        once per request (or tower batch) with all its items; override it, not ``select``, where one batched
        computation beats one per item (``by_size`` stacks items of one token count), and give each item exactly
        what it would get alone."""
        return [self.select(item) for item in items]


def by_size(
    items: list[VisualItem], choose: Callable[[list[VisualItem]], list[VisualSelection]]
) -> list[VisualSelection]:
    """``choose`` on each group of ``items`` with one token count (their ``[n, ...]`` tensors stack to ``[B, n, ...]``
    without padding: Qwen images of different grids, videos of different lengths), the results in the items' order.
    """
    groups: dict[int, list[int]] = defaultdict(list)
    for order, item in enumerate(items):
        groups[item.num_tokens].append(order)
    selections: list[VisualSelection | None] = [None] * len(items)
    for members in groups.values():
        for order, selection in zip(members, choose([items[i] for i in members]), strict=True):
            selections[order] = selection
    return selections


def greedy_by_size(
    method: VisionMethod, items: list[VisualItem], choose: Callable[[list[VisualItem], int], torch.Tensor]
) -> list[VisualSelection]:
    """``select_batch`` of a method that picks tokens greedily: per group of one token count (``by_size``), every
    item keeps all its tokens where ``method.budget`` is all of them; otherwise ``choose(group, count)`` returns the
    picks ``[B, width]`` (``-1`` past an item's count, as ``selection``'s batched greedy helpers do)."""

    def same_size(group: list[VisualItem]) -> list[VisualSelection]:
        count = method.budget(group[0])
        if count == group[0].num_tokens:
            return [VisualSelection(torch.arange(count)) for _ in group]
        return [VisualSelection(keep) for keep in ascending(choose(group, count))]

    return by_size(items, same_size)


def unit_features(items: list[VisualItem], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The items' ``features`` stacked and L2-normalised, ``[B, n, D]`` (items of one token count)."""
    return torch.nn.functional.normalize(torch.stack([item.features for item in items]).to(dtype), dim=-1)
