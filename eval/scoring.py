"""Answers and scores: a scored :class:`Record` per sample (its letter found by one of
:mod:`~vlmzip.eval.extractors`' extractors), and accuracies overall and by group with Wilson intervals.
Accuracies are fractions in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from vlmzip.eval.extractors import EXTRACTORS, extract_answer
from vlmzip.eval.samples import Sample

# Video-MME's taxonomies give the groups of every summary their order: the question fields results are grouped by
# are Video-MME's (other benches leave them empty, or fill them as the synthetic video set does).
from vlmzip.eval.videomme import DOMAINS, DURATIONS, SUB_CATEGORIES, TASK_TYPES

__all__ = ["EXTRACTORS", "Record", "extract_answer", "score", "summarize", "wilson_interval"]


@dataclass(frozen=True)
class Record:
    """One scored question, as written to a result file. ``response`` is the raw model output; ``prediction`` is
    None when it was unparsed or there was none (``error`` then says why); ``subtitles`` tells whether the prompt
    was a subtitle variant; ``frame_indices`` and ``timestamps`` are the frames the model saw; ``category`` is
    the question's (empty for Video-MME); ``subtitles_style`` is how the subtitle text was made (``None``
    without subtitles)."""

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
    subtitles_style: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frame_indices"], out["timestamps"] = list(self.frame_indices), list(self.timestamps)
        return out


def score(sample: Sample, response: str | None, *, extractor: str = "vlmzip") -> Record:
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
        subtitles_style=sample.subtitles_style if sample.subtitles is not None else None,
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
