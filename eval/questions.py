"""The multiple-choice question every bench asks: its fields, its four options and the hash of a question list.

A :class:`Question` carries Video-MME's grouping fields (duration, domain, sub-category, task type), since
results are grouped by them, and a free ``category`` for other benchmarks; a bench leaves the fields it has no
use for empty. Options always read ``"A. ..."`` .. ``"D. ..."`` and the answer is a letter of :data:`LETTERS`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LETTERS", "Question", "manifest_hash", "normalize_options"]

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question. ``options`` always read ``"A. ..."`` .. ``"D. ..."``; ``answer`` is a letter.

    ``video_id`` is the benchmark's number ("001"); ``video_file_stem`` names the video and subtitle files (the
    YouTube id, ``videoID`` in the Hugging Face copy). ``category`` is a free grouping for other benchmarks
    (``mcq``'s ``category``/``family``); Video-MME leaves it empty and groups by its own four fields.
    """

    question_id: str
    video_id: str
    video_file_stem: str
    duration: str
    domain: str
    sub_category: str
    task_type: str
    question: str
    options: tuple[str, str, str, str]
    answer: str
    category: str = ""


_OPTION_PREFIX = re.compile(r"^\(?([A-D])[.):]\s*")


def normalize_options(options: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Options (one per letter, in order) as ``"A. text"``: each may be labelled (``"A. x"``, ``"(A) x"``,
    ``"A) x"``, ``"A: x"``) with its own letter, or plain. Returns (normalised options, problems)."""
    normalized, problems = [], []
    for letter, value in zip(LETTERS, options):
        option = "" if value is None else str(value).strip()
        match = _OPTION_PREFIX.match(option)
        if match and match.group(1) != letter:
            problems.append(f"option {letter} is labelled {match.group(1)} ({option!r})")
        normalized.append(f"{letter}. {option[match.end() :] if match else option}")
    return normalized, problems


def manifest_hash(questions: Iterable[Question]) -> str:
    """SHA-256 of the canonical JSON of the questions, sorted by id: equal lists hash equally in any layout. An
    empty ``category`` is left out, so Video-MME hashes are what they were before the field existed."""
    rows = [_hashed(q) for q in sorted(questions, key=lambda q: q.question_id)]
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _hashed(question: Question) -> dict[str, Any]:
    row = asdict(question)
    if not row["category"]:
        del row["category"]
    return row
