"""One home per model family: its tiny test models, its real-size benchmark architectures and its trained
fixture's config and processor, registered by name (``base.Family``).

``vlmzip.eval.tiny``, ``bench``, ``fixtures`` and ``bundled`` take their lists of models from here, in
registration order (LLaVA, Qwen-VL, Gemma-3, LLaVA-NeXT/OneVision), so a family added here is added to every test
that runs over them."""

from __future__ import annotations

from collections.abc import Callable

from transformers import PreTrainedConfig

from vlmzip.eval.families.base import Family, FixtureFamily, TinyModel

__all__ = [
    "Family",
    "FixtureFamily",
    "TinyModel",
    "bench_archs",
    "families",
    "fixture_families",
    "fixture_family",
    "register",
    "tiny_models",
]

_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family``; its tiny, bench and fixture names must be new (one home per model)."""
    if family.name in _REGISTRY:
        raise ValueError(f"model family {family.name!r} is registered already")
    taken = {
        "tiny model": set(tiny_models()),
        "bench architecture": set(bench_archs()),
        "fixture": set(fixture_families()),
    }
    fixture = [family.fixture.name] if family.fixture else []
    for kind, names in (("tiny model", family.tiny), ("bench architecture", family.bench), ("fixture", fixture)):
        clash = sorted(taken[kind].intersection(names))
        if clash:
            raise ValueError(f"{kind} {', '.join(clash)} of {family.name!r} belongs to another family already")
    _REGISTRY[family.name] = family
    return family


def families() -> tuple[Family, ...]:
    """Every registered family, in registration order."""
    return tuple(_REGISTRY.values())


def tiny_models() -> dict[str, TinyModel]:
    """Every family's tiny test models by name (``vlmzip.eval.tiny.FAMILIES``)."""
    return {name: model for family in _REGISTRY.values() for name, model in family.tiny.items()}


def bench_archs() -> dict[str, Callable[[], PreTrainedConfig]]:
    """Every family's real-size architectures by ``vlmzip bench --arch`` name."""
    return {name: config for family in _REGISTRY.values() for name, config in family.bench.items()}


def fixture_families() -> dict[str, FixtureFamily]:
    """The families with a trained fixture, by fixture name (``vlmzip.eval.fixtures.FAMILIES``)."""
    return {f.fixture.name: f.fixture for f in _REGISTRY.values() if f.fixture is not None}


def fixture_family(name: str) -> FixtureFamily:
    """The fixture family ``name``; ``ValueError`` naming the known ones otherwise."""
    known = fixture_families()
    if name not in known:
        raise ValueError(f"unknown family {name!r}; expected one of {', '.join(known)}")
    return known[name]


# The built-in families, in the order every list of models keeps.
from vlmzip.eval.families import gemma3, llava, llava_next, qwen_vl  # noqa: E402

for _module in (llava, qwen_vl, gemma3, llava_next):
    register(_module.FAMILY)
