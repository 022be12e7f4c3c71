"""Scoring scene descriptions: what the fixtures answer to "Describe the image." (or "Describe the video."), read
back into facts and matched against the scene's own.

The fixtures were trained to describe a scene as ``synthetic.caption`` does: every object as ``size colour shape
position``, objects joined by commas, a full stop at the end (``"nothing."`` for an empty scene); a video
(``synthetic.video_caption``) adds one sentence per event, ``"Then the circle moved left."``. A *fact* is one
object (:class:`ObjectFact`) or one event (:class:`EventFact`); a whole fact counts only when every attribute
matches exactly (``"top"`` is not ``"top left"``). Everything here is a pure function of its arguments:

* :func:`scene_facts` / :func:`timeline_facts`: the reference facts of a scene or a clip;
* :func:`parse`: a generated description -> :class:`Description` (what it claims, and the segments that named
  nothing, ``unparsed``);
* :func:`score`: one description against its reference -> :class:`CaptionScore` (whole-fact precision, recall
  and F1; per-attribute hits of the best object alignment);
* :func:`summarize`: scored rows -> mean and micro precision / recall / F1, the mean F1's 95% interval and
  per-attribute accuracies, overall and by medium.

Parsing rules (lenient about form, strict about content): text is lower-cased and read as words and the
punctuation ``.`` and ``,``; a sentence that starts with "then" or names an event verb is an event, any other
sentence is a comma-separated list of objects. An object clause takes the first size, colour, shape and position
it names (a position is one of the nine cell names, matched whole); a clause that names none of them is garbage
(``unparsed``) unless it is the word "nothing". A claim with a missing attribute is still a claim: it counts
against precision and can never match a whole fact.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmzip.eval.intervals import mean_interval
from vlmzip.eval.synthetic import (
    COLOUR_NAMES,
    DIRECTIONS,
    SHAPES,
    SIZES,
    Scene,
    Timeline,
    position_name,
    timeline_events,
    timeline_frames,
)

__all__ = [
    "ATTRIBUTES",
    "CaptionScore",
    "Description",
    "details_table",
    "EventFact",
    "ObjectFact",
    "parse",
    "scene_facts",
    "score",
    "summarize",
    "timeline_facts",
]

ATTRIBUTES: tuple[str, ...] = ("size", "colour", "shape", "position")
POSITIONS: tuple[str, ...] = tuple(position_name(row, col) for row in range(3) for col in range(3))
_VERBS = {"appeared": "appear", "disappeared": "disappear", "moved": "move", "turned": "recolour"}
_TOKENS = re.compile(r"[a-z]+|[.,]")


@dataclass(frozen=True)
class ObjectFact:
    """One object as a description states it; ``None``: the description did not say."""

    size: str | None
    colour: str | None
    shape: str | None
    position: str | None

    def agreement(self, other: ObjectFact) -> tuple[bool, ...]:
        """Per attribute (:data:`ATTRIBUTES` order): stated by both and equal."""
        return tuple(
            getattr(self, name) is not None and getattr(self, name) == getattr(other, name) for name in ATTRIBUTES
        )


@dataclass(frozen=True)
class EventFact:
    """One event: ``kind`` (appear, disappear, move, recolour), the track's ``shape`` and ``detail`` (the direction
    of a move, the new colour of a recolour, ``""`` otherwise); ``None``: the description did not say."""

    kind: str | None
    shape: str | None
    detail: str | None


@dataclass(frozen=True)
class Description:
    """What a description claims: objects, events, and the segments that named nothing (garbage)."""

    objects: tuple[ObjectFact, ...] = ()
    events: tuple[EventFact, ...] = ()
    unparsed: tuple[str, ...] = ()

    @property
    def facts(self) -> tuple[ObjectFact | EventFact, ...]:
        return (*self.objects, *self.events)


# ------------------------------------------------------------------------------------------- reference facts


def scene_facts(scene: Scene) -> Description:
    """The facts of a scene: its objects, as ``synthetic.caption`` describes them."""
    if scene.grid != 3:
        # other grids name cells "row 1, column 2": the comma would split an object in two
        raise ValueError(f"captions are scored on 3x3 scenes only; this scene has a {scene.grid}x{scene.grid} grid")
    return Description(tuple(ObjectFact(o.size, o.colour, o.shape, scene.position(o)) for o in scene.objects))


def timeline_facts(timeline: Timeline) -> Description:
    """The facts of a clip, as ``synthetic.video_caption`` describes it: the first frame's objects, then every
    event."""
    first = scene_facts(timeline_frames(timeline)[0])
    events = tuple(EventFact(e.kind, e.shape, e.detail) for e in timeline_events(timeline))
    return Description(first.objects, events)


# ------------------------------------------------------------------------------------------------- parsing


def parse(text: str) -> Description:
    """The facts a generated description states (see the module's parsing rules)."""
    objects: list[ObjectFact] = []
    events: list[EventFact] = []
    unparsed: list[str] = []
    for sentence in _split(_TOKENS.findall(text.lower()), "."):
        if sentence[0] == "then" or any(word in _VERBS for word in sentence):
            event = _event(sentence)
            if event is None:
                unparsed.append(" ".join(sentence))
            else:
                events.append(event)
            continue
        for clause in _split(sentence, ","):
            fact = _object(clause)
            if fact is not None:
                objects.append(fact)
            elif clause != ["nothing"]:
                unparsed.append(" ".join(clause))
    return Description(tuple(objects), tuple(events), tuple(unparsed))


def _split(tokens: list[str], mark: str) -> list[list[str]]:
    """The non-empty runs of ``tokens`` between ``mark``s."""
    runs: list[list[str]] = [[]]
    for token in tokens:
        if token == mark:
            runs.append([])
        else:
            runs[-1].append(token)
    return [run for run in runs if run]


def _object(words: list[str]) -> ObjectFact | None:
    """The first size, colour, shape and position a clause names; ``None`` when it names none."""
    found: dict[str, str] = {}
    i = 0
    while i < len(words):
        pair = " ".join(words[i : i + 2])
        if pair in POSITIONS:  # two-word cell names first: "middle left" is not "middle" then "left"
            found.setdefault("position", pair)
            i += 2
            continue
        word = words[i]
        for name, vocabulary in (("size", SIZES), ("colour", COLOUR_NAMES), ("shape", SHAPES), ("position", POSITIONS)):
            if word in vocabulary:
                found.setdefault(name, word)
        i += 1
    if not found:
        return None
    return ObjectFact(*(found.get(name) for name in ATTRIBUTES))


def _event(words: list[str]) -> EventFact | None:
    """``then the SHAPE VERB [DETAIL]``: its kind, shape and detail; ``None`` when it names neither shape nor verb."""
    shape = next((w for w in words if w in SHAPES), None)
    verb_at = next((i for i, w in enumerate(words) if w in _VERBS), None)
    if shape is None and verb_at is None:
        return None
    kind = _VERBS[words[verb_at]] if verb_at is not None else None
    after = words[verb_at + 1 :] if verb_at is not None else []
    details = {"move": DIRECTIONS, "recolour": COLOUR_NAMES}.get(kind or "")
    detail = "" if kind in ("appear", "disappear") else None
    if details is not None:
        detail = next((w for w in after if w in details), None)
    return EventFact(kind, shape, detail)


# ------------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class CaptionScore:
    """One description against its reference. Counts of facts (whole facts: objects and events), of objects and
    of events, each ``(reference, predicted, matched)``; ``attributes``: per attribute, the reference objects
    whose aligned predicted object states it rightly; ``garbage``: segments that named nothing."""

    facts: tuple[int, int, int]
    objects: tuple[int, int, int]
    events: tuple[int, int, int]
    attributes: dict[str, int]
    garbage: int

    @property
    def precision(self) -> float:
        return _precision(*self.facts)

    @property
    def recall(self) -> float:
        return _recall(*self.facts)

    @property
    def f1(self) -> float:
        return _f1(self.precision, self.recall)

    def to_dict(self) -> dict[str, Any]:
        """The per-sample fields of a ``samples.jsonl`` row (what :func:`summarize` reads back)."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "facts": _counts(self.facts),
            "objects": _counts(self.objects),
            "events": _counts(self.events),
            "attributes": dict(self.attributes),
            "garbage": self.garbage,
        }


def score(predicted: Description, reference: Description) -> CaptionScore:
    """Whole-fact matches of ``predicted`` against ``reference`` (as multisets: a fact stated twice matches once
    and counts once against precision), and per-attribute hits of the object alignment that agrees on the most
    attributes."""
    objects = _matched(predicted.objects, reference.objects)
    events = _matched(predicted.events, reference.events)
    facts = tuple(a + b for a, b in zip(objects, events))
    hits = _aligned_hits(predicted.objects, reference.objects)
    return CaptionScore(facts, objects, events, dict(zip(ATTRIBUTES, hits)), len(predicted.unparsed))


def _matched(predicted: Sequence[Any], reference: Sequence[Any]) -> tuple[int, int, int]:
    common = Counter(predicted) & Counter(reference)
    return len(reference), len(predicted), sum(common.values())


def _aligned_hits(predicted: Sequence[ObjectFact], reference: Sequence[ObjectFact]) -> tuple[int, ...]:
    """Per attribute, the reference objects whose partner states it rightly, under the one-to-one alignment with
    the most agreeing attributes (ties: the most whole facts, then the first found). Exact: dynamic programming
    over the subsets of reference objects (at most nine, one a cell), one predicted object at a time."""
    zero = (0,) * len(ATTRIBUTES)
    best: dict[int, tuple[tuple[int, int], tuple[int, ...]]] = {0: ((0, 0), zero)}
    for claim in predicted:
        grown = dict(best)
        for used, (rank, hits) in best.items():
            for r, truth in enumerate(reference):
                if used >> r & 1:
                    continue
                agree = claim.agreement(truth)
                candidate = ((rank[0] + sum(agree), rank[1] + all(agree)), tuple(map(sum, zip(hits, agree))))
                key = used | 1 << r
                if key not in grown or candidate[0] > grown[key][0]:
                    grown[key] = candidate
        best = grown
    return max(best.values(), key=lambda entry: entry[0])[1]


def _precision(reference: int, predicted: int, matched: int) -> float:
    """Matched / predicted; an empty prediction is right only about an empty reference."""
    return matched / predicted if predicted else float(reference == 0)


def _recall(reference: int, predicted: int, matched: int) -> float:
    return matched / reference if reference else float(predicted == 0)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _counts(counts: tuple[int, int, int]) -> dict[str, int]:
    return dict(zip(("reference", "predicted", "matched"), counts))


# ----------------------------------------------------------------------------------------------- summaries


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregates of scored rows (``samples.jsonl`` rows: a ``medium``, an ``error`` or the fields of
    :meth:`CaptionScore.to_dict`): ``overall`` and ``by_medium`` (image, video), each as :func:`_aggregate`."""
    rows = list(rows)
    media = sorted({str(r.get("medium") or "") for r in rows})
    return {
        "overall": _aggregate(rows),
        "by_medium": {m: _aggregate([r for r in rows if str(r.get("medium") or "") == m]) for m in media},
    }


def _aggregate(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """``total``, ``errors``, ``evaluated``; ``unparsed`` (answers that stated no fact although the reference
    had some); the mean per-sample ``precision``, ``recall`` and ``f1`` with ``ci95`` (the mean F1's normal 95%
    interval, ``None`` below two samples); ``micro`` P/R/F1 over all facts pooled, and over ``objects`` and
    ``events`` apart; ``attributes``: per attribute, the share of reference objects stated rightly."""
    answered = [r for r in rows if not r.get("error")]
    f1s = [float(r["f1"]) for r in answered]
    interval = mean_interval(f1s, bounds=(0.0, 1.0)) if len(f1s) > 1 else None
    objects = _pooled(answered, "objects")
    return {
        "total": len(rows),
        "errors": len(rows) - len(answered),
        "evaluated": len(answered),
        "unparsed": sum(1 for r in answered if r["facts"]["predicted"] == 0 < r["facts"]["reference"]),
        "f1": statistics.fmean(f1s) if f1s else None,
        "ci95": list(interval) if interval else None,
        "precision": statistics.fmean(float(r["precision"]) for r in answered) if answered else None,
        "recall": statistics.fmean(float(r["recall"]) for r in answered) if answered else None,
        "micro": _micro(_pooled(answered, "facts")),
        "objects": _micro(objects),
        "events": _micro(_pooled(answered, "events")),
        "attributes": {
            name: sum(r["attributes"][name] for r in answered) / objects[0] if objects[0] else None
            for name in ATTRIBUTES
        },
    }


def _pooled(rows: list[Mapping[str, Any]], key: str) -> tuple[int, int, int]:
    return tuple(sum(r[key][field] for r in rows) for field in ("reference", "predicted", "matched"))


def _micro(counts: tuple[int, int, int]) -> dict[str, float] | None:
    """P/R/F1 of pooled counts; ``None`` when there was nothing to state and nothing was stated."""
    if not counts[0] and not counts[1]:
        return None
    precision, recall = _precision(*counts), _recall(*counts)
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall)}


def details_table(results: Mapping[str, Any]) -> str | None:
    """Per policy and medium (``vlmzip eval``'s results): mean F1, micro F1, per-attribute accuracies, events F1."""
    lines = [
        "| policy | medium | F1 | micro F1 | size | colour | shape | position | events F1 | unparsed | evaluated |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, result in results["policies"].items():
        for medium, tally in result["summary"]["by_medium"].items():
            cells = [tally["f1"], (tally["micro"] or {}).get("f1")]
            cells += [tally["attributes"][name] for name in ATTRIBUTES]
            cells.append((tally["events"] or {}).get("f1"))
            shown = " | ".join("-" if value is None else f"{100 * value:.1f}%" for value in cells)
            lines.append(f"| {policy} | {medium} | {shown} | {tally['unparsed']} | {tally['evaluated']} |")
    return "\n".join(lines) if len(lines) > 2 else None
