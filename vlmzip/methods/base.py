"""Base classes of compression methods, one per stage.

A method is a frozen dataclass whose fields are its validated, defaulted parameters. The stage base class
holds the machinery (budgets, selection, packing); a method usually only implements ``score``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from vlmzip.budget import Keep, kept_count, validate_keep
from vlmzip.errors import PolicyError, UnsupportedModelError

if TYPE_CHECKING:
    from vlmzip.runtime.cache import CompressedLayer

Stage = Literal["vision", "prefill", "decode"]


@dataclass(frozen=True)
class Method:
    """A compression method: its policy-string name, stage, paper, and typed parameters (the fields)."""

    name: ClassVar[str] = ""
    stage: ClassVar[Stage]
    paper: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "keep":
                validate_keep(value, self.name)
            elif not _matches(value, self._hints()[field.name]):
                raise PolicyError(f"{self.name}: {field.name}={value!r} is not a valid {self._hints()[field.name]}")
        self.validate()

    def validate(self) -> None:
        """Check parameter ranges; raise ``PolicyError`` naming the parameter. Override to add checks."""

    def check_model(self, info: ModelInfo) -> None:
        """Check the parameters against a model (e.g. a layer beyond its depth). Override where needed."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def from_params(cls, params: dict[str, str]) -> Method:
        """Build from the string parameters of a policy (``{"keep": "0.5"}``), converting by field type."""
        hints = cls._hints()
        unknown = sorted(set(params) - set(hints))
        if unknown:
            raise PolicyError(
                f"{cls.name}: unknown parameter {unknown[0]!r}; parameters are: {', '.join(hints) or '(none)'}"
            )
        return cls(**{key: _parse_value(cls.name, key, text, hints[key]) for key, text in params.items()})

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __str__(self) -> str:
        params = ",".join(f"{key}={_format_value(value)}" for key, value in self.params().items())
        return f"{self.name}:{params}" if params else self.name

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class ModelInfo:
    """What a method may check its parameters against."""

    num_layers: int  # decoder layers of the language model
    vision_layers: int  # encoder layers of the vision tower
    min_prefill_layer: int = 1  # first layer where the prefill stage may cut (Qwen3-VL: after DeepStack)


@dataclass
class VisualItem:
    """One image or video of one sample, as the vision stage sees it.

    ``positions`` are the sequence indices of its placeholder tokens in prompt order; ``grid`` is its
    ``(frames, rows, cols)`` layout in language-model tokens; ``scores`` holds signals the adapter computed
    for it (e.g. ``"vision_attention"``), one value per token; ``features`` are its token embeddings as the
    language model would receive them.
    """

    sample: int
    index: int  # order of the item in the request (row-major over samples)
    kind: Literal["image", "video"]
    positions: torch.Tensor
    grid: tuple[int, int, int]
    kind_index: int = 0  # order among the items of its kind: the order of the model's feature tensors
    sample_index: int = 0  # order among the items of its sample
    features: torch.Tensor | None = None
    scores: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.numel())


@dataclass(frozen=True)
class VisionMethod(Method):
    """Keeps a subset of each image's (or video's) tokens before the language model sees them.

    ``keep`` is a fraction of each item's tokens or a token count per item.
    """

    stage: ClassVar[Stage] = "vision"
    #: vision-tower signals the method needs, computed by the adapter (e.g. ``"vision_attention"``)
    needs: ClassVar[frozenset[str]] = frozenset()
    keep: Keep = 64

    def vision_layers(self, info: ModelInfo) -> list[int]:
        """Vision-tower layers whose attention the method reads (empty unless it needs attention)."""
        return []

    def check_model(self, info: ModelInfo) -> None:
        if "vision_attention" in self.needs and not self.vision_layers(info):
            raise UnsupportedModelError(
                f"{self.name}: this model's visual features come from before its vision tower's first attention "
                "layer (e.g. a LLaVA vision_feature_layer naming the embeddings), so there is no attention to rank "
                "tokens by; use a method that needs none (random, uniform, fastv)"
            )

    def score(self, item: VisualItem) -> torch.Tensor:
        """Importance of each of ``item``'s tokens, ``[n]``: higher is kept first."""
        raise NotImplementedError

    def select(self, item: VisualItem) -> torch.Tensor:
        """Indices (ascending, local to the item) of the tokens to keep."""
        count = kept_count(self.keep, item.num_tokens)
        if count == item.num_tokens:
            return torch.arange(count)
        scores = self.score(item).float().cpu()
        return scores.argsort(descending=True, stable=True)[:count].sort().values


@dataclass(frozen=True)
class PrefillMethod(Method):
    """Drops visual tokens inside the language model during the prompt pass, from layer ``layer`` on.

    The base class asks the runtime for attention scores at ``score_layers`` and, at ``layer``, keeps the
    ``keep`` highest-scoring visual rows of each sample (a fraction of its visual tokens, or a count).
    """

    stage: ClassVar[Stage] = "prefill"
    layer: int = 2
    keep: Keep = 0.5

    def validate(self) -> None:
        if self.layer < 1:
            raise PolicyError(f"{self.name}: layer={self.layer} must be >= 1 (scores come from layer - 1)")

    def check_model(self, info: ModelInfo) -> None:
        if self.layer >= info.num_layers:
            raise PolicyError(
                f"{self.name}: layer={self.layer} is beyond the language model's depth "
                f"({info.num_layers} layers: use 1..{info.num_layers - 1})"
            )
        if self.layer < info.min_prefill_layer:
            raise PolicyError(
                f"{self.name}: layer={self.layer} is too early for this model; the first layer it may cut "
                f"at is {info.min_prefill_layer} (its DeepStack features are added to layers before that)"
            )

    def score_layers(self) -> frozenset[int]:
        """Layers whose attention (from the query rows ``query_rows`` chooses) the method needs."""
        return frozenset({self.layer - 1})

    def score(self, attention: dict[int, torch.Tensor]) -> torch.Tensor:
        """Importance of every current row, ``[B, L]``, from the captured attention mass per layer."""
        return attention[self.layer - 1]


@dataclass(frozen=True)
class DecodeMethod(Method):
    """Evicts visual KV-cache entries once the prompt has been processed, before generation reads them.

    Per layer (full-attention layers only; sliding-window layers are left alone) and per sample, keeps
    the ``keep`` highest-scoring visual entries (a fraction of the sample's visual entries, or a count).
    All heads of a layer keep the same entries, so masks stay ``[B, 1, q, kv]``.
    """

    stage: ClassVar[Stage] = "decode"
    keep: Keep = 0.5

    def score(self, layer: CompressedLayer) -> torch.Tensor:
        """Importance of each stored entry of ``layer``, ``[B, S]``: higher is kept first."""
        raise NotImplementedError


def _matches(value: Any, hint: Any) -> bool:
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _parse_value(method: str, key: str, text: str, hint: Any) -> Any:
    try:
        if key == "keep" or hint == Keep:
            return float(text) if any(c in text for c in ".eE") else int(text)
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if hint in (int, float, str):
            return hint(text)
    except ValueError:
        raise PolicyError(f"{method}: {key}={text!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    raise PolicyError(f"{method}: parameter {key!r} cannot be set from a policy string")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)
