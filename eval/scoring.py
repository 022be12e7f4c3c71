"""Answers and scores: the letter in a model's response, a scored :class:`Record` per sample, and accuracies
overall and by group with Wilson intervals. Accuracies are fractions in [0, 1]."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from vlmzip.errors import InputError
from vlmzip.eval.samples import Sample

# Video-MME's taxonomies give the groups of every summary their order: the question fields results are grouped by
# are Video-MME's (other benches leave them empty, or fill them as the synthetic video set does).
from vlmzip.eval.videomme import DOMAINS, DURATIONS, SUB_CATEGORIES, TASK_TYPES

__all__ = ["EXTRACTORS", "Record", "extract_answer", "score", "summarize", "wilson_interval"]

_PREFIXES = (
    "the best answer is",
    "the correct answer is",
    "the answer is",
    "the answer",
    "the best option is",
    "the correct option is",
    "best answer:",
    "best option:",
    "final answer:",
    "answer:",
    "option:",
)
_PREFIX_RE = re.compile("|".join(re.escape(p) for p in sorted(_PREFIXES, key=len, reverse=True)), re.IGNORECASE)
_ONLY_LETTER = re.compile(r"[\s(\[{\"'*`]*([A-Da-d])[\s)\]}\"'*`.:,;!]*")
_LEADING_OPTION = re.compile(r"[\s(\[{*`]*([A-Da-d])[.)\]:](?:\s|$)")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?!['’]?[A-Za-z0-9])")
_ARTICLE_A = re.compile(r"A\s+[a-z]")
_LONG = 10  # words: a longer response with no standalone letter is unparsed


def extract_answer(response: str | None, extractor: str = "standalone") -> str | None:
    """The answer letter in a model's response, or ``None`` when it cannot be told (unparsed).

    ``standalone`` (default): remove answer prefixes ("The best answer is", "The answer is", "Answer:", ... any
    case), then: a response that is only a letter in either case (``"b"``, ``"(C)."``) or starts like an option
    (``"b. text"``, ``"A) text"``) gives that letter; otherwise the first standalone capital A-D (not inside a
    word), skipping an article "A" (``"A man ..."``) when another letter follows; no such letter (long response
    or not) is unparsed. ``videomme-authors``: the authors' ``extract_characters_regex`` (also lmms-eval's):
    the first capital A-D anywhere, even inside a word.
    """
    if extractor not in EXTRACTORS:
        raise InputError(f"unknown answer extractor {extractor!r}: expected one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[extractor](response or "")


def _extract_standalone(response: str) -> str | None:
    text = " ".join(_PREFIX_RE.sub(" ", response).split())
    for pattern in (_ONLY_LETTER.fullmatch, _LEADING_OPTION.match):
        match = pattern(text)
        if match:
            return match.group(1).upper()
    candidates = list(_STANDALONE.finditer(text))
    if not candidates:
        return None  # includes long responses without a standalone letter
    first = candidates[0]
    if first.group(1) == "A" and len(candidates) > 1 and _ARTICLE_A.match(text, first.start()):
        first = candidates[1]
    return first.group(1)


def _extract_authors(response: str) -> str | None:
    s = response.strip()
    # The authors' list, with its two missing commas (two prefixes glued together) kept as they are.
    for prefix in (
        "The best answer is",
        "The correct answer is",
        "The answer is",
        "The answer",
        "The best option isThe correct option is",
        "Best answer:Best option:",
    ):
        s = s.replace(prefix, "")
    if len(s.split()) > _LONG and not re.search("[ABCD]", s):
        return None
    match = re.search(r"[ABCD]", s)
    return match[0] if match else None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "standalone": _extract_standalone,
    "videomme-authors": _extract_authors,
}


@dataclass(frozen=True)
class Record:
    """One scored question, as written to a result file. ``response`` is the raw model output; ``prediction`` is
    None when it was unparsed or there was none (``error`` then says why); ``subtitles`` tells whether the prompt
    was a subtitle variant; ``frame_indices`` and ``timestamps`` are the frames the model saw; ``category`` is
    the question's (empty for Video-MME)."""

    question_id: str
    video_id: str
    video_file_stem: str
    duration: str
    domain: str
    sub_category: str
    task_type: str
    answer: str
    response: str | None
    prediction: str | None
    correct: bool
    error: str | None
    template: str
    extractor: str
    sampling: str
    subtitles: bool
    frame_indices: tuple[int, ...] = ()
    timestamps: tuple[float, ...] = ()
    category: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frame_indices"], out["timestamps"] = list(self.frame_indices), list(self.timestamps)
        return out


def score(sample: Sample, response: str | None, *, extractor: str = "standalone") -> Record:
    """Score a model's raw ``response`` to ``sample`` (kept verbatim). A sample with an error scores as an error
    record whatever the response."""
    q = sample.question
    error = sample.error
    if error is None and response is None:
        error = "no response"
    prediction = extract_answer(response, extractor) if error is None else None
    return Record(
        question_id=q.question_id,
        video_id=q.video_id,
        video_file_stem=q.video_file_stem,
        duration=q.duration,
        domain=q.domain,
        sub_category=q.sub_category,
        task_type=q.task_type,
        answer=q.answer,
        response=response if sample.error is None else None,
        prediction=prediction,
        correct=prediction is not None and prediction == q.answer,
        error=error,
        template=sample.template,
        extractor=extractor,
        sampling=sample.sampling,
        subtitles=sample.subtitles is not None,
        frame_indices=tuple(sample.frame_indices),
        timestamps=tuple(sample.timestamps),
        category=q.category,
    )


Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for ``correct`` successes out of ``n`` (95% by default); None when n == 0."""
    if n <= 0:
        return None
    p = correct / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact ends, not rounding noise
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


_GROUPS = (
    ("duration", "by_duration", DURATIONS),
    ("domain", "by_domain", DOMAINS),
    ("sub_category", "by_sub_category", SUB_CATEGORIES),
    ("task_type", "by_task_type", TASK_TYPES),
    ("category", "by_category", ()),
)


def summarize(records: Iterable[Record | Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and by duration, domain, sub-category, task type and category (records or their dicts);
    a grouping no record fills (Video-MME has no ``category``, ``mcq`` questions no duration) is left out.

    Every group reports ``total`` questions, ``errors`` (no response: missing or undecodable video),
    ``evaluated`` = total - errors, ``unparsed`` (evaluated, no letter found), ``correct``, ``accuracy`` =
    correct / evaluated (unparsed counted wrong, as lmms-eval does) with its 95% Wilson interval ``ci95``, and
    ``accuracy_parsed`` = correct / (evaluated - unparsed) (the authors' eval_your_results.py skips unparsed
    answers). Accuracies are fractions, ``None`` for an empty denominator. Groups are listed in the benchmark's
    order, unknown names after, sorted; categories sorted.
    """
    rows = [r.to_dict() if isinstance(r, Record) else dict(r) for r in records]
    out: dict[str, Any] = {"overall": _tally(rows)}
    for key, name, canonical in _GROUPS:
        names = {str(r.get(key) or "") for r in rows}
        if names <= {""}:
            continue
        ordered = [n for n in canonical if n in names] + sorted(names - set(canonical))
        out[name] = {n: _tally([r for r in rows if str(r.get(key) or "") == n]) for n in ordered}
    return out


def _tally(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    total = len(rows)
    errors = sum(1 for r in rows if r.get("error"))
    evaluated = total - errors
    unparsed = sum(1 for r in rows if not r.get("error") and r.get("prediction") is None)
    correct = sum(1 for r in rows if not r.get("error") and bool(r.get("correct")))
    interval = wilson_interval(correct, evaluated)
    parsed = evaluated - unparsed
    return {
        "total": total,
        "errors": errors,
        "evaluated": evaluated,
        "unparsed": unparsed,
        "correct": correct,
        "accuracy": correct / evaluated if evaluated else None,
        "ci95": list(interval) if interval else None,
        "accuracy_parsed": correct / parsed if parsed else None,
    }
