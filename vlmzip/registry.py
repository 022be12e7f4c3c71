"""Registries of compression methods (by policy name) and model adapters (by ``config.model_type``).

Both are filled by the registered modules themselves: the built-in methods when ``vlmzip`` is imported (its
``__init__`` imports ``vlmzip.methods``), a user's method when its module is, and the adapters when
``adapter_for`` first imports the ``vlmzip.adapters`` package. This module imports neither, so the core never
depends on a specific method or adapter.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmzip.errors import PolicyError, UnsupportedModelError

if TYPE_CHECKING:
    from vlmzip.adapter import Adapter
    from vlmzip.stages import Method

_METHODS: dict[str, type[Method]] = {}
_ADAPTERS: dict[str, type[Adapter]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under ``cls.name`` in policies.

    Registering a class of the same module and name again (a module executed twice) replaces it; another
    class under a taken name is refused.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name: set the class attribute `name` to its policy name")
    known = _METHODS.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"method name {cls.name!r} is already registered by {known.__module__}.{known.__qualname__}")
    _METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The method registered as ``name``; ``PolicyError`` naming the known methods otherwise."""
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PolicyError(f"unknown method {name!r}.{hint} Known methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


@dataclass(frozen=True)
class MethodInfo:
    """What ``vlmzip.methods()`` lists for one method."""

    name: str
    stage: str
    paper: str
    params: dict[str, Any]  # parameter name -> default value
    title: str = ""
    deviation: str = ""
    module: str = ""  # where it is defined: ``vlmzip.methods.*`` for the built-in ones
    attention_only: bool = False  # a prefill method that supplies attention and cuts nothing (sparse prefill)

    @property
    def builtin(self) -> bool:
        return self.module.startswith("vlmzip.methods.")

    def param_strings(self) -> list[str]:
        """Each parameter with its default, as a policy string writes it (``layers=8/16/24``)."""
        from vlmzip.stages.method import format_value

        return [f"{name}={format_value(value)}" for name, value in self.params.items()]

    def __str__(self) -> str:
        return f"{self.name:<12} {self.stage:<8} {', '.join(self.param_strings())}"


def methods() -> list[MethodInfo]:
    """Every registered method with its stage, paper and parameters (with defaults), sorted by stage."""
    order = {"vision": 0, "prefill": 1, "decode": 2}
    infos = [
        MethodInfo(
            cls.name,
            cls.stage,
            cls.paper,
            cls.defaults(),
            cls.title,
            cls.deviation,
            cls.__module__,
            cls.stage == "prefill" and not cls.cuts,
        )
        for cls in _METHODS.values()
    ]
    return sorted(infos, key=lambda info: (order[info.stage], info.name))


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: use ``cls`` for every ``config.model_type`` in ``cls.model_types``."""
    for model_type in cls.model_types:
        _ADAPTERS[model_type] = cls
    return cls


@dataclass(frozen=True)
class FamilyInfo:
    """What ``vlmzip.families()`` lists for one model family."""

    family: str
    model_types: tuple[str, ...]
    notes: str


def families() -> list[FamilyInfo]:
    """Every model family with an adapter: its name, the ``config.model_type`` values it serves, its notes."""
    importlib.import_module("vlmzip.adapters")
    infos = [FamilyInfo(cls.family, cls.model_types, cls.notes) for cls in dict.fromkeys(_ADAPTERS.values())]
    return sorted(infos, key=lambda info: info.family)


def adapter_for(model: Any) -> Adapter:
    """Build the adapter for ``model``'s family; ``UnsupportedModelError`` naming the supported ones otherwise."""
    importlib.import_module("vlmzip.adapters")
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise UnsupportedModelError(
            f"vlmzip has no adapter for model_type {model_type!r} ({type(model).__name__}). "
            f"Supported model types: {', '.join(sorted(_ADAPTERS))}"
        )
    return _ADAPTERS[model_type](model)
