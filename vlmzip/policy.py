"""A policy: at most one method per stage (vision, prefill, decode), with a one-line string form.

The prefill stage may name two methods when one cuts rows and the other only supplies the prompt pass's attention
(``"fastv:layer=2,keep=0.25+minference"``: sparse attention in every layer, the cut at layer 2); they become one
``ComposedPrefill``.

``"vtc-cls:keep=64+fastv:layer=2,keep=0.5+knorm:keep=0.5"``: stages joined by ``+``, each
``method:param=value,param=value`` (a schedule's values joined by ``/``: ``layers=8/16/24``); ``"none"`` keeps
everything. A policy string that is exactly a preset's name (``PRESETS``) is that paper's method at every stage it
acts in, with the published defaults; inside a ``+`` chain, or with parameters, the name is the one method.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmzip.errors import PolicyError
from vlmzip.registry import method_class
from vlmzip.stages import DecodeMethod, Method, PrefillMethod, VisionMethod

_STAGE_TYPES = {"vision": VisionMethod, "prefill": PrefillMethod, "decode": DecodeMethod}

#: a paper's method across the stages it acts in, with its published defaults (each part's docstring has them)
PRESETS = {
    "mustdrop": "mustdrop-vision+mustdrop+mustdrop-decode",
    "zipvl": "zipvl+zipvl-kv",
}


@dataclass(frozen=True)
class Policy:
    """What vlmzip does at each stage; ``None`` leaves that stage untouched."""

    vision: VisionMethod | None = None
    prefill: PrefillMethod | None = None
    decode: DecodeMethod | None = None

    def __post_init__(self) -> None:
        for stage, expected in _STAGE_TYPES.items():
            method = getattr(self, stage)
            if method is not None and not isinstance(method, expected):
                raise PolicyError(
                    f"Policy.{stage} must be a {stage}-stage method, got {type(method).__name__} "
                    f"(a {getattr(method, 'stage', 'non')}-stage method)"
                )

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Parse the string form; raises ``PolicyError`` naming the offending part."""
        if not isinstance(text, str) or not text.strip():
            raise PolicyError(f"a policy string must be non-empty, got {text!r} (use 'none' to keep everything)")
        if text.strip() == "none":
            return cls()
        text = PRESETS.get(text.strip(), text)
        stages: dict[str, Method] = {}
        for part in text.split("+"):
            method = _parse_method(part.strip())
            if method.stage == "prefill" and "prefill" in stages:  # one that cuts, one that supplies attention
                stages["prefill"] = PrefillMethod.compose(stages["prefill"], method)
                continue
            if method.stage in stages:
                raise PolicyError(
                    f"policy {text!r} has two {method.stage}-stage methods "
                    f"({stages[method.stage].name} and {method.name}); use at most one per stage"
                )
            stages[method.stage] = method
        return cls(**stages)

    @classmethod
    def coerce(cls, policy: Policy | str) -> Policy:
        if isinstance(policy, Policy):
            return policy
        if isinstance(policy, str):
            return cls.parse(policy)
        raise PolicyError(f"policy must be a vlmzip.Policy or its string form, got {type(policy).__name__}")

    def methods(self) -> list[Method]:
        return [m for m in (self.vision, self.prefill, self.decode) if m is not None]

    def __str__(self) -> str:
        return "+".join(str(m) for m in self.methods()) or "none"


def _parse_method(part: str) -> Method:
    name, _, body = part.partition(":")
    name = name.strip()
    if not name:
        raise PolicyError(f"empty method name in policy part {part!r}")
    cls = method_class(name)
    params: dict[str, str] = {}
    for assignment in filter(None, (a.strip() for a in body.split(","))):
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PolicyError(f"{name}: expected param=value, got {assignment!r}")
        if key.strip() in params:
            raise PolicyError(f"{name}: parameter {key.strip()!r} given twice")
        params[key.strip()] = value.strip()
    return cls.from_params(params)
