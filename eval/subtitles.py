"""Subtitles: SRT files read into cues, and the cues shown at a clip's sampled frames (the text subtitle prompts
give a model), in one of two styles (:data:`SUBTITLE_STYLES`).

``vlmzip`` (the default)
    Every cue shown at one of the frames the model sees (start <= t < end, in seconds), each once, in time
    order; all of a cue's lines, tags removed, HTML entities decoded (``&amp;`` -> ``&``). Any SRT reads (BOM,
    CRLF, ``.`` or ``,`` before the milliseconds, blocks separated by several blank lines).
``lmms-eval``
    lmms-eval 0.7.3's ``videomme_doc_to_text_subtitle`` (its default ``frame_num: 32``), reproduced: the cues
    are kept in file order (a repeated start/end pair keeps the first place and the last text) and turned into
    frame numbers rounded down (``int(seconds * fps)``); 32 frames are sampled for the subtitle text
    (``np.linspace(0, N-1, 32)``) whatever frames the model sees; a cue is shown when a sampled frame number lies
    in ``[start, end)``; the cues shown are listed in the order Python's ``set`` gives their file positions
    (not time order: from about ten cues on they can come out of order); of each cue only the text inside its
    first ``<font color="white" size=".72c">...</font>`` is kept (a cue without one is left out) and entities
    such as ``&amp;`` stay raw. A file lmms-eval cannot parse (a timing line without ``HH:MM:SS,mmm --> ...``
    in a block's second line) raises :class:`InputError`, where lmms-eval would stop the whole run. The frame
    count and rate come from PyAV (lmms-eval asks OpenCV; they agree on constant-frame-rate videos).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmzip.errors import InputError
from vlmzip.eval.video import Clip, FileRef

__all__ = [
    "LMMS_EVAL_SUBTITLE_FRAMES",
    "SUBTITLE_STYLES",
    "Cue",
    "check_style",
    "lmms_eval_cues",
    "lmms_eval_subtitles",
    "parse_srt",
    "read_subtitles",
    "subtitle_text",
    "subtitles_at",
]

SUBTITLE_STYLES = ("vlmzip", "lmms-eval")
LMMS_EVAL_SUBTITLE_FRAMES = 32  # lmms-eval's videomme_w_subtitle default (lmms_eval_specific_kwargs frame_num)


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


# ------------------------------------------------------------------------------------------------------ lmms-eval

_LMMS_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')


def lmms_eval_cues(text: str) -> list[Cue]:
    """The cues of an SRT file as lmms-eval 0.7.3 reads them: blocks split at every blank line, the second line
    of a block of at least three lines its timing, the rest its text (lines joined with spaces, tags and
    entities kept); file order; a repeated (start, end) pair keeps its first place and its last text.
    :class:`InputError` for a timing lmms-eval cannot read."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # what lmms-eval's text-mode open() gives
    cues: dict[tuple[float, float], str] = {}
    for number, block in enumerate(text.split("\n\n"), start=1):
        lines = block.split("\n")
        if not block.strip() or len(lines) < 3:
            continue
        try:
            start, end = (_lmms_seconds(part) for part in lines[1].split(" --> ")[:2])
        except ValueError as error:
            raise InputError(
                f"block {number} of the SRT text has a timing line lmms-eval cannot read ({lines[1]!r}: {error}); "
                "lmms-eval would stop there: fix the file, or use --subtitles-style vlmzip, which reads it"
            ) from None
        cues[(start, end)] = " ".join(lines[2:])
    return [Cue(start, end, body) for (start, end), body in cues.items()]


def _lmms_seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.split(":")
    seconds, millis = rest.split(",")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000


def lmms_eval_subtitles(cues: Sequence[Cue], n_frames: int, fps: float, frames: int = LMMS_EVAL_SUBTITLE_FRAMES) -> str:
    """lmms-eval 0.7.3's subtitle text for the cues of :func:`lmms_eval_cues` and a video of ``n_frames`` frames
    at ``fps``: the cues at ``frames`` frames spread with ``np.linspace`` (see the module docstring)."""
    spans = [(int(cue.start * fps), int(cue.end * fps)) for cue in cues]
    sampled = np.linspace(0, n_frames - 1, frames, dtype=int).tolist()
    hits = [k for frame in sampled for k, (first, last) in enumerate(spans) if first <= frame < last]
    shown = []
    for k in list(set(hits)):  # lmms-eval's order: that of a set of the cues' file positions
        match = _LMMS_FONT.search(cues[k].text)
        if match:
            shown.append(match.group(1))
    return "\n".join(shown)


def check_style(style: str) -> str:
    """``style`` when it is one of :data:`SUBTITLE_STYLES`; :class:`InputError` naming them otherwise."""
    if style not in SUBTITLE_STYLES:
        raise InputError(f"unknown subtitles style {style!r}: expected one of {', '.join(SUBTITLE_STYLES)}")
    return style


def subtitle_text(source: FileRef | str | Path, clip: Clip, style: str = "vlmzip") -> str:
    """The subtitle text a prompt gets for the SRT file ``source`` and the frames of ``clip``, in ``style``."""
    ref = source if isinstance(source, FileRef) else FileRef(Path(source))
    if check_style(style) == "lmms-eval":
        return lmms_eval_subtitles(lmms_eval_cues(ref.read_text()), clip.n_frames, clip.fps)
    return subtitles_at(parse_srt(ref.read_text()), clip.timestamps)
