"""Subtitles: SRT files read into cues, and the cues shown at a clip's sampled frames (the text subtitle prompts
give a model)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlmzip.eval.video import FileRef

__all__ = ["Cue", "parse_srt", "read_subtitles", "subtitles_at"]


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: shown from ``start`` (inclusive) to ``end`` (exclusive), in seconds."""

    start: float
    end: float
    text: str


_SRT_TIME = re.compile(
    r"(\d+):(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?\s*-->\s*(\d+):(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
)
_TAG = re.compile(r"<[^>]*>")


def parse_srt(text: str) -> list[Cue]:
    """Cues of an SRT file: BOMs, CRLF/CR line ends, ``<font ...>`` and other tags and HTML entities handled.

    Multi-line cue text is joined with spaces; cues with no text or an unreadable timing line are dropped. The
    cues come back sorted by start time.
    """
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    cues = []
    for block in re.split(r"\n[ \t]*\n", text.strip()):
        lines = block.split("\n")
        timing = next(((k, m) for k, line in enumerate(lines) if (m := _SRT_TIME.search(line))), None)
        if timing is None:
            continue
        k, match = timing
        body = " ".join(html.unescape(_TAG.sub("", line)).strip() for line in lines[k + 1 :])
        body = " ".join(body.split())
        if body:
            groups = match.groups()
            cues.append(Cue(_srt_seconds(groups[:4]), _srt_seconds(groups[4:]), body))
    return sorted(cues, key=lambda c: (c.start, c.end))


def _srt_seconds(parts: Sequence[str | None]) -> float:
    hours, minutes, seconds, millis = parts
    return (
        int(hours or 0) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) + int((millis or "0").ljust(3, "0")) / 1000
    )


def read_subtitles(source: FileRef | str | Path) -> list[Cue]:
    ref = source if isinstance(source, FileRef) else FileRef(Path(source))
    return parse_srt(ref.read_text())


def subtitles_at(cues: Sequence[Cue], timestamps: Iterable[float]) -> str:
    """The text of every cue shown at one of ``timestamps`` (start <= t < end), each once, in time order, one
    per line; ``""`` when none is."""
    times = sorted(set(timestamps))
    chosen = [cue for cue in cues if any(cue.start <= t < cue.end for t in times)]
    return "\n".join(cue.text for cue in chosen)
