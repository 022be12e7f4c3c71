"""The prefill-stage contract: drop (or merge) visual rows inside the language model during the prompt pass.

A method declares a schedule of ``Cut``s (before which layer, what budget, which layer's attention scores
it), which prompt rows' attention it reads (``query_rows``), and turns that attention into scores, budgets
and a selection of the rows each sample keeps. Samples of one batch may keep different numbers of rows. The
runtime captures the attention, cuts hidden states, masks, rotary embeddings and position ids, keeps text
rows whatever the method says, and counts what each sample kept. A method may also replace the attention
of the prompt pass itself (``attend``; block-sparse prefill): a policy may pair one method that cuts with one
that only supplies attention (``ComposedPrefill``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vlmzip.budget import Keep, kept_count
from vlmzip.errors import PolicyError
from vlmzip.selection import top_k_mask
from vlmzip.stages.method import Method, ModelInfo, Stage

#: ``fn(module, query, key, value, attention_mask, **kwargs) -> (output, weights)``: transformers' interface
AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class Cut:
    """One step of a schedule: before decoder layer ``layer`` runs, keep ``keep`` of the visual rows held then
    (a fraction of them, or a count per sample), ranked by the attention captured at ``score_layer`` (``None``:
    the scores need no attention)."""

    layer: int
    keep: Keep
    score_layer: int | None


@dataclass
class PromptRows:
    """The rows the hidden states hold at one point of the prompt pass, ``[B, L]`` each; left-padded.

    ``valid`` marks real rows, ``visual`` visual-token rows (valid ones only), ``position`` each row's column in
    the original prompt (``input_ids``); ``visual_count`` is the visual rows per sample held now, ``visual_in``
    those the language model received (a schedule's budgets are often shares of these). At a cut, ``hidden``
    holds the hidden states ``[B, L, D]`` entering the layer.
    """

    valid: torch.Tensor
    visual: torch.Tensor
    position: torch.Tensor
    visual_count: list[int]
    visual_in: list[int]
    hidden: torch.Tensor | None = None

    @property
    def text(self) -> torch.Tensor:
        return self.valid & ~self.visual

    @property
    def last(self) -> torch.Tensor:
        """The last prompt token of each sample (the last row: padding is on the left)."""
        last = torch.zeros_like(self.valid)
        last[:, -1] = True
        return last

    @property
    def instruction(self) -> torch.Tensor:
        """Text rows after each sample's last visual row: the question; all text rows if there is no visual."""
        columns = torch.arange(self.valid.shape[1], device=self.valid.device)
        last_visual = torch.where(self.visual, columns, -1).amax(dim=1, keepdim=True)
        return self.text & (columns > last_visual)


@dataclass
class QueryAttention:
    """Head-averaged softmax attention of the chosen query rows over every key row of one layer.

    ``probs [B, Q, K]``; ``rows [B, Q]`` is each query's row index (left-padded: ``valid [B, Q]`` marks real
    queries; padding queries have all-zero ``probs``). Keys are the rows the layer attends over, in row order.
    """

    probs: torch.Tensor
    rows: torch.Tensor
    valid: torch.Tensor

    def mass(self) -> torch.Tensor:
        """Mean attention each key receives from the sample's queries, ``[B, K]``."""
        count = self.valid.sum(dim=1, keepdim=True).clamp(min=1)
        return self.probs.sum(dim=1) / count


@dataclass
class RowSelection:
    """The visual rows each sample keeps, ``keep [B, L]`` bool (text rows are always kept).

    ``hidden [B, L, D]``, when given, replaces the hidden states of the kept rows (merged rows);
    ``counts`` are the kept visual rows per sample, on the host, where the method knows them (it spares a
    device round trip).
    """

    keep: torch.Tensor
    hidden: torch.Tensor | None = None
    counts: list[int] | None = None


class _class_property:
    """A read-only property of the class, also read through its instances (what a method's steps are)."""

    def __init__(self, getter: Callable[[type], Any]) -> None:
        self.getter = getter
        self.__doc__ = getter.__doc__

    def __get__(self, instance: Any, owner: type) -> Any:
        return self.getter(owner)


@dataclass
class PromptLayer:
    """What ``attend`` knows about the prompt-pass layer it computes.

    ``index`` is the decoder layer; ``rows`` the rows the hidden states hold (left-padded ``[B, L]``, as the layer's
    query and key rows), ``lengths`` their real rows per sample (on the host); ``items [B, L]`` the visual item each
    row belongs to (its order among the sample's images and videos, from 0; ``-1``: a text or padding row);
    ``window`` the layer's sliding window (``None``: full attention). ``record(density)`` notes the share of the
    layer's causal attention blocks computed per sample (``[B]``; ``stats.attention_density``): a layer that does not
    call it counts as dense.
    """

    index: int
    rows: PromptRows
    lengths: list[int]
    items: torch.Tensor
    window: int | None
    record: Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class PrefillMethod(Method):
    """Drops visual rows inside the language model during the prompt pass.

    A method defines its ``schedule`` (``OneCutMethod`` gives the common one: a single cut before ``layer``) and may
    override: ``query_rows`` (which rows' attention scores; default the last prompt token), ``score`` (default: the
    query rows' mean attention, averaged over heads), ``budget`` (per-sample, possibly data-dependent), ``select`` (any
    other choice, merging) and ``attend`` (the attention of the prompt pass). A method that only supplies attention
    defines no ``schedule`` (it cuts nothing), so a policy can pair it with one that cuts (``"fastv+minference"``:
    ``ComposedPrefill``). Parameters are the subclass's fields; a budget is ``keep``, a fraction of each sample's visual
    rows or a count (what it counts, e.g. rows after the last cut or "equivalent tokens", the method's docstring says).
    """

    stage: ClassVar[Stage] = "prefill"

    def check_model(self, info: ModelInfo) -> None:
        previous = 0
        schedule = self.schedule(info)
        for cut in schedule:
            if cut.layer >= info.num_layers:
                raise PolicyError(
                    f"{self.name}: layer={cut.layer} is beyond the language model's depth "
                    f"({info.num_layers} layers: use 1..{info.num_layers - 1})"
                )
            if cut.layer < info.min_prefill_layer:
                raise PolicyError(
                    f"{self.name}: layer={cut.layer} is too early for this model; the first layer it may cut "
                    f"at is {info.min_prefill_layer} (its DeepStack features are added to layers before that)"
                )
            if cut.layer <= previous or (cut.score_layer is not None and not 0 <= cut.score_layer < cut.layer):
                raise PolicyError(
                    f"{self.name}: its schedule must cut at increasing layers, each scored at an earlier layer "
                    f"(got {schedule})"
                )
            previous = cut.layer

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.cuts or self.supplies_attention):
            raise PolicyError(
                f"{type(self).__name__} does nothing: a prefill method defines schedule(info) (or derives from "
                "OneCutMethod), attend(...), or both"
            )

    @_class_property
    def cuts(cls) -> bool:
        """Whether the method cuts rows: it defines a ``schedule``."""
        return cls.schedule is not PrefillMethod.schedule

    @_class_property
    def supplies_attention(cls) -> bool:
        """Whether the method computes the prompt pass's attention itself: it defines ``attend``."""
        return cls.attend is not PrefillMethod.attend

    def schedule(self, info: ModelInfo) -> tuple[Cut, ...]:
        """The cuts on a model of ``info.num_layers`` decoder layers, by increasing layer (``scale_layers`` maps a
        paper's layers to that depth); none by default. A method may return ``Cut`` subclasses that carry what its
        own ``budget`` needs."""
        return ()

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        """Which rows' attention scores the visual rows, ``[B, L]`` bool (default: the last prompt token)."""
        return rows.last

    def score(self, cut: Cut, attention: QueryAttention | None, rows: PromptRows) -> torch.Tensor:
        """Importance of every row held now, ``[B, L]`` (only visual rows are ranked): the mean attention the
        query rows put on each row at ``cut.score_layer``."""
        return attention.mass()

    def budget(self, cut: Cut, rows: PromptRows, scores: torch.Tensor) -> list[int]:
        """Visual rows each sample keeps at ``cut``."""
        return [kept_count(cut.keep, n) for n in rows.visual_count]

    def select(self, cut: Cut, rows: PromptRows, scores: torch.Tensor) -> RowSelection:
        """The kept visual rows: each sample's ``budget`` highest scores."""
        counts = self.budget(cut, rows, scores)
        if counts == rows.visual_count:
            return RowSelection(rows.visual, counts=counts)
        chosen = top_k_mask(scores, rows.visual, torch.tensor(counts, device=scores.device))
        return RowSelection(chosen, counts=counts)

    def attend(
        self,
        layer: PromptLayer,
        base: AttentionFunction,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention of prompt-pass layer ``layer.index`` (query ``[B, Hq, L, d]``, key and value ``[B, Hkv, L,
        d]``, the mask and keyword arguments the model passed): ``(output [B, L, Hq, d], weights or None)``, as
        ``base`` (the model's own backend, the default) returns it."""
        return base(module, query, key, value, attention_mask, **kwargs)

    @staticmethod
    def compose(first: PrefillMethod, second: PrefillMethod) -> PrefillMethod:
        """One prefill method of two: the one that cuts and the one that supplies attention (either order);
        ``PolicyError`` naming both when they do not split that way."""
        roles = {method: (method.cuts, method.supplies_attention) for method in (first, second)}
        cutter = [m for m, (cuts, attends) in roles.items() if cuts and not attends]
        attender = [m for m, (cuts, attends) in roles.items() if attends and not cuts]
        if len(cutter) == 1 and len(attender) == 1 and cutter[0] is not attender[0]:
            return ComposedPrefill(cutter[0], attender[0])
        both = [m.name for m, (cuts, attends) in roles.items() if cuts and attends]
        reason = (
            f"{' and '.join(both)} both cuts and supplies attention"
            if both
            else ("both cut rows" if first.cuts else "both supply attention")
        )
        raise PolicyError(
            f"two prefill-stage methods ({first.name} and {second.name}) cannot be combined: {reason}; use at most "
            "one per stage, or one that cuts with one that only supplies attention (e.g. 'fastv+minference')"
        )


@dataclass(frozen=True)
class ComposedPrefill(PrefillMethod):
    """Two prefill methods as one: ``cutter``'s schedule and choices, ``attention``'s ``attend`` in every
    prompt-pass layer (before and after the cuts). A policy string joins them with ``+``."""

    name = "composed"
    cutter: PrefillMethod
    attention: PrefillMethod

    def validate(self) -> None:
        if not (self.cutter.cuts and not self.cutter.supplies_attention and self.attention.supplies_attention):
            raise PolicyError(f"{self.cutter.name}+{self.attention.name}: use PrefillMethod.compose to pair methods")

    def __str__(self) -> str:
        return f"{self.cutter}+{self.attention}"

    def check_model(self, info: ModelInfo) -> None:
        self.cutter.check_model(info)
        self.attention.check_model(info)

    def schedule(self, info: ModelInfo) -> tuple[Cut, ...]:
        return self.cutter.schedule(info)

    def query_rows(self, rows: PromptRows) -> torch.Tensor:
        return self.cutter.query_rows(rows)

    def score(self, cut: Cut, attention: QueryAttention | None, rows: PromptRows) -> torch.Tensor:
        return self.cutter.score(cut, attention, rows)

    def budget(self, cut: Cut, rows: PromptRows, scores: torch.Tensor) -> list[int]:
        return self.cutter.budget(cut, rows, scores)

    def select(self, cut: Cut, rows: PromptRows, scores: torch.Tensor) -> RowSelection:
        return self.cutter.select(cut, rows, scores)

    def attend(self, layer, base, module, query, key, value, attention_mask, **kwargs):
        return self.attention.attend(layer, base, module, query, key, value, attention_mask, **kwargs)


@dataclass(frozen=True)
class OneCutMethod(PrefillMethod):
    """A prefill method with one cut: before layer ``layer``, keep ``keep`` of each sample's visual rows (a
    fraction, or a count), ranked by the attention captured at layer ``layer - 1``."""

    layer: int = 2
    keep: Keep = 0.5

    def validate(self) -> None:
        if self.layer < 1:
            raise PolicyError(f"{self.name}: layer={self.layer} must be >= 1 (scores come from layer - 1)")

    def schedule(self, info: ModelInfo) -> tuple[Cut, ...]:
        return (Cut(self.layer, self.keep, self.layer - 1),)


@dataclass(frozen=True)
class ScheduleCut(Cut):
    """Cut ``index`` of a schedule cutting before ``layers`` of a ``depth``-layer model, whose budgets are
    ``shape`` (a paper's per-cut counts) scaled to an equivalent-token target."""

    layers: tuple[int, ...] = ()
    depth: int = 0
    index: int = 0
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class EquivalentSchedule(PrefillMethod):
    """Cuts before a paper's ``layers`` (given for a ``depth``-layer model, scaled to the model's), each scored at
    the layer before it, keeping ``keep`` *equivalent* visual tokens: the mean over the language model's layers of
    the visual rows each processes (a fraction of each sample's visual tokens, or a count).

    The cuts' budgets have the shape of the paper's published budgets nearest ``keep`` (``budgets``: per-cut counts
    by the equivalent tokens they stand for out of ``reference_tokens``; a fraction counts as that share of them),
    scaled so that each sample's mean is its target (``equivalent_budgets``). A fraction below the schedule's floor
    (the share of layers before the first cut, which see every visual token) is rejected; a count below a sample's
    floor keeps the least the schedule can (one visual row after each cut), and ``stats`` reports what it was.
    """

    budgets: ClassVar[dict[int, tuple[int, ...]]] = {}
    reference_tokens: ClassVar[int] = 576  # LLaVA-1.5's visual tokens, which papers' budgets are given for
    layers: tuple[int, ...] = (2, 6, 15)
    depth: int = 32
    keep: Keep = 64

    def validate(self) -> None:
        validate_layers(self.name, self.layers, self.depth)
        stages = min(len(shape) for shape in self.budgets.values())
        if len(self.layers) > stages:
            raise PolicyError(
                f"{self.name}: layers={_slashed(self.layers)} names {len(self.layers)} cuts; the published budgets "
                f"have {stages} (name at most {stages} layers)"
            )

    def check_model(self, info: ModelInfo) -> None:
        super().check_model(info)
        cuts = self.schedule(info)
        if cuts and isinstance(self.keep, float) and self.keep < cuts[0].layer / info.num_layers:
            raise PolicyError(
                f"{self.name}: keep={self.keep} is below this schedule's floor of {cuts[0].layer / info.num_layers:.4g}"
                f": the first {cuts[0].layer} of the model's {info.num_layers} layers see every visual token "
                f"(layers={_slashed(self.layers)} for depth={self.depth}); keep more, or cut earlier (layers)"
            )

    def schedule(self, info: ModelInfo) -> tuple[Cut, ...]:
        layers = scale_layers(self.layers, self.depth, info)
        wanted = self.keep * self.reference_tokens if isinstance(self.keep, float) else self.keep
        shape = self.budgets[min(self.budgets, key=lambda tokens: (abs(tokens - wanted), tokens))][: len(layers)]
        cut = ScheduleCut(0, self.keep, None, layers, info.num_layers, 0, shape)
        return tuple(dataclasses.replace(cut, layer=at, score_layer=at - 1, index=i) for i, at in enumerate(layers))

    def budget(self, cut: ScheduleCut, rows: PromptRows, scores: torch.Tensor) -> list[int]:
        counts, first = [], cut.layers[0]
        for n, held in zip(rows.visual_in, rows.visual_count):
            target = kept_count(self.keep, n) if isinstance(self.keep, int) else self.keep * n
            if target <= (first * n + cut.depth - first) / cut.depth:  # the least: one row after each cut
                counts.append(min(held, 1))
            else:
                counts.append(min(held, equivalent_budgets(cut.shape, cut.layers, cut.depth, n, target)[cut.index]))
        return counts


def scale_layers(layers: tuple[int, ...], depth: int, info: ModelInfo) -> tuple[int, ...]:
    """A schedule's layers given for a ``depth``-layer model, mapped to ``info.num_layers`` layers.

    Each layer scales by ``info.num_layers / depth`` (rounded), no earlier than ``info.min_prefill_layer``;
    layers that would collide move one layer later, and those pushed past the last layer are dropped (a
    four-layer model has room for three cuts). With ``depth == info.num_layers`` the layers are kept as given.
    """
    scaled: list[int] = []
    for layer in layers:
        target = max(round(layer * info.num_layers / depth), info.min_prefill_layer, scaled[-1] + 1 if scaled else 0)
        if target >= info.num_layers:
            break
        scaled.append(target)
    return tuple(scaled)


def equivalent_budgets(
    shape: tuple[float, ...], layers: tuple[int, ...], depth: int, n: int, target: float
) -> list[int]:
    """Visual rows each cut of a schedule keeps (``_equivalent_budgets``), memoised: a batch's samples mostly
    share ``n`` and every cut asks again, and the bisection is host work in the middle of the prompt pass."""
    return list(_equivalent_budgets(tuple(shape), tuple(layers), depth, n, target))


@functools.lru_cache(maxsize=4096)
def _equivalent_budgets(
    shape: tuple[float, ...], layers: tuple[int, ...], depth: int, n: int, target: float
) -> tuple[int, ...]:
    """Visual rows each cut of a schedule keeps so that the ``depth`` layers process ``target`` visual rows on
    average (a schedule's "equivalent tokens"), out of ``n`` the language model received.

    ``shape`` gives the cuts' budgets up to a common factor (a paper's counts, e.g. ``(66, 30, 17)``), ``layers``
    the layers the cuts come before; layers before the first cut see all ``n``. The factor is found by bisection;
    budgets are capped at ``n`` (and at the previous cut's), at least 1. Raises ``PolicyError`` when ``target``
    is below what the layers before the first cut already process.
    """
    floor = layers[0] * n / depth
    if target < floor + sum(b - a for a, b in zip(layers, (*layers[1:], depth))) / depth:  # one row per later layer
        raise PolicyError(
            f"an equivalent budget of {target:g} visual tokens is below this schedule's floor of {floor:.1f}: the "
            f"first {layers[0]} of {depth} layers see all {n}; keep more, or cut earlier (the layers parameter)"
        )
    widths = [b - a for a, b in zip(layers, (*layers[1:], depth))]

    def budgets(factor: float) -> list[float]:
        return [min(float(n), factor * share) for share in shape]

    low, high = 0.0, n / min(shape)
    for _ in range(60):
        middle = (low + high) / 2
        if floor + sum(w * b for w, b in zip(widths, budgets(middle))) / depth < target:
            low = middle
        else:
            high = middle
    counts: list[int] = []
    for budget in budgets(high):
        counts.append(max(1, min(round(budget), counts[-1] if counts else n)))
    return tuple(counts)


def validate_layers(method: str, layers: tuple[int, ...], depth: int) -> None:
    """``layers`` must increase strictly and lie in ``1 .. depth - 1``: raise ``PolicyError`` naming the problem."""
    if not layers:
        raise PolicyError(f"{method}: layers must name at least one layer")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise PolicyError(f"{method}: layers={_slashed(layers)} must increase strictly (e.g. layers=8/16/24)")
    if layers[0] < 1 or layers[-1] >= depth:
        raise PolicyError(
            f"{method}: layers={_slashed(layers)} must lie in 1..{depth - 1} for depth={depth} "
            "(the depth the layers are given for; the schedule is scaled to the model's own depth)"
        )


def _slashed(values: tuple) -> str:
    return "/".join(str(v) for v in values)
