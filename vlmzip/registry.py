"""Registries of compression methods (by policy name) and model adapters (by ``config.model_type``).

The core never imports a specific adapter: ``adapter_for`` imports the ``vlmzip.adapters`` package, whose
modules register themselves with ``register_adapter``.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmzip.errors import PolicyError, UnsupportedModelError

if TYPE_CHECKING:
    from vlmzip.adapter import Adapter
    from vlmzip.methods.base import Method

_METHODS: dict[str, type[Method]] = {}
_ADAPTERS: dict[str, type[Adapter]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under ``cls.name`` in policies."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The method registered as ``name``; ``PolicyError`` naming the known methods otherwise."""
    _load_builtin_methods()
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

    def __str__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name:<10} {self.stage:<8} {params}"


def methods() -> list[MethodInfo]:
    """Every registered method with its stage, paper and parameters (with defaults), sorted by stage."""
    _load_builtin_methods()
    order = {"vision": 0, "prefill": 1, "decode": 2}
    infos = [MethodInfo(cls.name, cls.stage, cls.paper, cls.defaults()) for cls in _METHODS.values()]
    return sorted(infos, key=lambda info: (order[info.stage], info.name))


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: use ``cls`` for every ``config.model_type`` in ``cls.model_types``."""
    for model_type in cls.model_types:
        _ADAPTERS[model_type] = cls
    return cls


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


def _load_builtin_methods() -> None:
    importlib.import_module("vlmzip.methods")
