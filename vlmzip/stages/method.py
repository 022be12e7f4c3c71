"""What every compression method is: a frozen dataclass of validated, defaulted parameters.

The stage contracts (``vlmzip.stages.vision``, ``.prefill``, ``.decode``) derive from ``Method``; a method
file derives from one of them and overrides only the steps it needs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from vlmzip.budget import Keep, validate_keep
from vlmzip.errors import PolicyError

Stage = Literal["vision", "prefill", "decode"]


@dataclass(frozen=True)
class Method:
    """A compression method: its policy-string name, stage, paper, and typed parameters (the fields).

    ``paper`` is its citation key (``"arXiv:2403.06764"``, or ``"baseline"``), ``title`` the paper's title, and
    ``deviation`` how vlmzip's version differs from the paper or its reference code, where it does (the README's
    method table is generated from these: ``vlmzip methods --markdown``).
    """

    name: ClassVar[str] = ""
    stage: ClassVar[Stage]
    paper: ClassVar[str] = ""
    title: ClassVar[str] = ""
    deviation: ClassVar[str] = ""

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
        """The method's own parameters with their defaults (a stage option is documented with its stage)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if not f.metadata.get("stage_option")}

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
        """Every parameter, but stage options and optional parameters left at their default: a policy string names
        them only when set."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not (
                (f.metadata.get("stage_option") or f.metadata.get("optional")) and getattr(self, f.name) == f.default
            )
        }

    def __str__(self) -> str:
        params = ",".join(f"{key}={format_value(value)}" for key, value in self.params().items())
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
    tower_cut: bool = False  # whether vision methods may prune inside the tower (``at_layer``)
    head_dim: int = 0  # channels of a key or value head of the language model (0: unknown)
    context: int = 0  # positions the language model was built for (``max_position_embeddings``; 0: unknown)
    model_type: str = ""  # the model's ``config.model_type`` ("" unknown)
    heads: int = 0  # query heads of a language-model layer (0: unknown)
    kv_heads: int = 0  # key/value heads of a language-model layer (0: unknown)


def stage_option(default: Any) -> Any:
    """A parameter every method of a stage takes (the vision stage's ``at_layer``): omitted from policy strings
    and method tables while it has its default."""
    return dataclasses.field(default=default, metadata={"stage_option": True})


def optional(default: Any) -> Any:
    """A method's own parameter that is off at its default (an empty path): listed with the method's parameters, but
    omitted from policy strings while it has its default."""
    return dataclasses.field(default=default, metadata={"optional": True})


def _matches(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_matches(v, item) for v in value)
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
        if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] in (int, float):
            return tuple(typing.get_args(hint)[0](part) for part in text.split("/"))
    except ValueError:
        raise PolicyError(f"{method}: {key}={text!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    raise PolicyError(f"{method}: parameter {key!r} cannot be set from a policy string")


def format_value(value: Any) -> str:
    """A parameter value as a policy string writes it (a schedule's tuple as ``8/16/24``)."""
    if isinstance(value, tuple):
        return "/".join(format_value(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)
