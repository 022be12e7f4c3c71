"""Presets that make a ``vlmzip eval`` run score as another harness does: ``--compat lmms-eval``.

A preset fixes every setting a harness's Video-MME score depends on besides the model's answers: the prompt
template, the frames, the subtitle text, the answer extractor and the answer length. With it, a run's
``results.json`` accuracy is what that harness reports for the same predictions (its score is accuracy x 100;
vlmzip also counts unparsed answers wrong). A flag that contradicts the preset is an error, never a silent
override: a run that says ``compat: lmms-eval`` in its ``config.json`` is scored exactly so. Giving a flag with the
preset's own value is allowed.

What a preset cannot fix: the model's own input processing (resizing, chat template), which is the predictor's,
and the frame decoder (lmms-eval's models decode with decord or OpenCV, vlmzip with PyAV: the same frame numbers,
possibly different pixels on some files).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from vlmzip.errors import InputError

__all__ = ["PRESETS", "Preset", "apply_preset"]


@dataclass(frozen=True)
class Preset:
    """A named set of ``vlmzip eval`` settings: ``settings`` maps an option's dest to its value (``None``: the
    option must not be given); ``source`` says what it reproduces."""

    name: str
    source: str
    settings: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "lmms-eval": Preset(
        "lmms-eval",
        "lmms-eval 0.7.3's videomme and videomme_w_subtitle tasks, default model kwargs: its prompts, 32 frames "
        "spread with np.linspace, 16 new tokens, its subtitle text and its ranked answer extractor",
        {
            "template": "lmms-eval",
            "frames": 32,
            "sampler": "linspace",
            "fps": None,
            "max_frames": None,
            "subtitles_style": "lmms-eval",
            "extractor": "lmms-eval",
            "max_new_tokens": 16,
        },
    ),
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def apply_preset(args: argparse.Namespace, notes: list[str] | None = None) -> None:
    """Set ``args`` (in place) to the preset named by ``args.compat`` (nothing when it is ``None``). Options left
    unset (``None``) take the preset's values; :class:`InputError` naming each given option that contradicts the
    preset, what the preset sets it to, and the two ways out."""
    name = getattr(args, "compat", None)
    if name is None:
        return
    if name not in PRESETS:
        raise InputError(f"unknown --compat {name!r}: expected one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    conflicts = []
    for dest, value in preset.settings.items():
        given = getattr(args, dest, None)
        if given is not None and given != value:
            wanted = "not given" if value is None else f"{_flag(dest)} {value}"
            conflicts.append(f"{_flag(dest)} {given} (the preset: {wanted})")
    if conflicts:
        raise InputError(
            f"--compat {name} fixes every setting {name}'s score depends on, and contradicts {'; '.join(conflicts)}: "
            f"drop those options to score as {name} does, or drop --compat and choose each setting yourself"
        )
    for dest, value in preset.settings.items():
        setattr(args, dest, value)
    if notes is not None:
        shown = ", ".join(f"{_flag(d)} {v}" for d, v in preset.settings.items() if v is not None)
        notes.append(f"compat {name}: {shown}")
