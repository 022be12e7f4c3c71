"""The records of a fidelity sweep and the tables ``docs/fidelity.md`` shows of them.

A ``Cell`` is one model answering one question set under one policy: which questions it got right (in question
order, so two methods' answers pair up) and how many visual tokens its language model processed. A table is
every cell of one model and medium: a row per method, a column per fraction of visual tokens kept, each
accuracy with its 95% interval, bold where the method beats random pruning at that budget beyond chance.
"""

from __future__ import annotations

import itertools
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from vlmzip.eval import bundled, fixtures
from vlmzip.eval.intervals import Difference, paired_difference, plus_minus, wilson

__all__ = [
    "BEGIN",
    "END",
    "KEEPS",
    "Cell",
    "bundled_record",
    "section",
    "sections",
    "summary",
    "write",
]

KEEPS: tuple[float, ...] = (0.5, 0.25, 0.10, 0.05)
CHECKED: tuple[str, float] = ("fastv", 0.10)  # the compressed cell the test suite re-measures on the shipped models
DEFAULT = "default"  # the keep of a method without a ``keep`` parameter, measured at its own budget
BEGIN, END = "<!-- fidelity:begin (written by python -m vlmzip.eval.fidelity) -->", "<!-- fidelity:end -->"
_STAGES = {"vision": 0, "prefill": 1, "decode": 2}


@dataclass(frozen=True)
class Cell:
    """One model on one question set under one policy. ``label`` names the cell within its table ("none",
    "blank", "fastv@0.1", "zipvl@default"); ``source`` the questions ("bundled", or "seed=S": fresh test
    questions drawn with seed S). ``check`` cells are the bundled questions re-measured on the CPU for the test
    suite, whatever the table's questions and device."""

    model: str
    medium: str
    source: str
    label: str
    method: str  # "" for the uncompressed and blanked cells
    stage: str
    keep: str  # "1", a fraction, or DEFAULT
    policy: str
    correct: str  # "1" or "0" per question
    visual_in: int  # visual tokens in, summed over the questions
    visual_seen: float  # visual tokens each LM layer processed, averaged over layers, summed over the questions
    seconds: float
    device: str
    check: bool = False

    @property
    def key(self) -> tuple[str, str, str, bool]:
        return self.model, self.medium, self.label, self.check

    @property
    def answers(self) -> list[bool]:
        return [c == "1" for c in self.correct]

    @property
    def accuracy(self) -> float:
        return self.correct.count("1") / len(self.correct)

    @property
    def equivalent(self) -> float:
        """The equivalent visual tokens: what the language model's layers processed on average, as a share of the
        visual tokens in. A schedule or a threshold keeps different counts per layer or sample; this is the
        figure its accuracy and its cost compare at."""
        return self.visual_seen / self.visual_in if self.visual_in else 1.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Cell:
        return Cell(**{f.name: data[f.name] for f in fields(Cell) if f.name in data})


def label(method: str, keep: float | str) -> str:
    return f"{method}@{keep:g}" if isinstance(keep, float) else f"{method}@{keep}"


# -------------------------------------------------------------------------------------------------- tables


def section(cells: Sequence[Cell], command: str) -> str:
    """The table of one model and medium: a row per method, a column per fraction of visual tokens kept, and
    the notes that say how to read it."""
    table = {c.label: c for c in cells if not c.check}
    first = next(iter(table.values()))
    lines = [_heading(first, table.values()), "", f"Written by `{command}` ({_machine(table.values())}).", ""]
    lines += _rows(table)
    lines += ["", _notes(table)]
    defaults = _defaults(table)
    if defaults:
        lines += ["", defaults]
    record = _check_line(cells, first.medium)
    if record:
        lines += ["", record]
    return "\n".join(lines)


def _heading(first: Cell, cells: Iterable[Cell]) -> str:
    tokens = fixtures.visual_tokens(first.model, fixtures.saved_spec(bundled.model_path(first.model)))
    unit = "visual tokens per image" if first.medium == "image" else "visual tokens per 2 frames"
    n = len(first.correct)
    questions = f"{n:,} bundled" if first.source == "bundled" else f"{n:,} fresh, {first.source.replace('=', ' ')}"
    seconds = sum(c.seconds for c in cells)
    return f"### {first.model} — {first.medium} questions ({questions}, {tokens} {unit}, {seconds:,.0f} s)"


def _machine(cells: Iterable[Cell]) -> str:
    devices = ", ".join(sorted({c.device for c in cells}))
    return f"{platform.machine()}, torch {torch.__version__}, {devices}"


def _methods(table: Mapping[str, Cell]) -> list[tuple[str, str]]:
    """(method, stage) of every row: random first, then by stage and name as ``vlmzip methods`` lists them."""
    found = {(c.method, c.stage) for c in table.values() if c.method}
    return sorted(found, key=lambda ms: (ms[0] != "random", _STAGES.get(ms[1], 3), ms[0]))


def _rows(table: Mapping[str, Cell]) -> list[str]:
    lines = [
        "| method | stage | 100% | " + " | ".join(f"{k:.0%}" for k in KEEPS) + " |",
        "|---|---|---:|" + "---:|" * len(KEEPS),
    ]
    whole = _value(table.get("none"))
    for method, stage in _methods(table):
        if not any(label(method, k) in table for k in KEEPS):
            continue  # measured at its own budget only: listed under the table
        cells = [_cell(table.get(label(method, k)), table.get(label("random", k))) for k in KEEPS]
        name = f"{method} (baseline)" if method == "random" else method
        lines.append(f"| {name} | {stage} | {whole} | " + " | ".join(cells) + " |")
    return lines


def _value(cell: Cell | None) -> str:
    """Accuracy in % with the larger side of its 95% Wilson interval: "82.0 ±2.4"."""
    if cell is None:
        return "–"
    right, n = cell.correct.count("1"), len(cell.correct)
    return f"{100 * right / n:.1f} ±{100 * plus_minus(right, n):.1f}"


def _cell(cell: Cell | None, random: Cell | None) -> str:
    text = _value(cell)
    if cell is None:
        return text
    # a decode-stage cell is the uncompressed model's answer (given before the method acts): no pruning to compare
    if cell.method != "random" and cell.stage != "decode" and better(cell, random):
        text = f"**{text}**"
    return f"{text} (eq {cell.equivalent:.0%})" if cell.stage == "prefill" else text


def better(cell: Cell, baseline: Cell | None) -> bool:
    """Whether ``cell`` beats ``baseline`` beyond chance: the 95% interval of the paired difference on the same
    questions lies above zero."""
    return baseline is not None and _difference(cell, baseline).above_zero


def _difference(cell: Cell, baseline: Cell) -> Difference:
    if len(cell.correct) != len(baseline.correct):
        raise ValueError(f"{cell.label} and {baseline.label} answered different question sets")
    return paired_difference(cell.answers, baseline.answers)


def _defaults(table: Mapping[str, Cell]) -> str:
    """The methods that set their own budget (a threshold), each at its default parameters, with the visual
    tokens that budget came to."""
    cells = sorted((c for c in table.values() if c.keep == DEFAULT), key=lambda c: c.method)
    if not cells:
        return ""
    listed = ", ".join(f"`{c.policy}` {_value(c)} (eq {c.equivalent:.0%})" for c in cells)
    return f"At their own budget (their defaults: a threshold, no cap): {listed}."


def _notes(table: Mapping[str, Cell]) -> str:
    random = "" if any(c.method == "random" for c in table.values()) else " (random pruning was not measured)"
    return (
        "Cells: accuracy in % ± the larger side of its 95% Wilson interval. Bold: better than random pruning at the "
        "same budget, the 95% interval of the paired difference on the same questions above zero"
        f"{random}. eq: a prefill-stage method's equivalent visual tokens, the mean over the language model's layers "
        "of the visual tokens each processed, as a share of those in (a schedule or a per-sample threshold compares "
        f"at that figure, not at its nominal keep). Image blanked, nothing pruned: {_value(table.get('blank'))}. "
        "Chance: 25%. Decode-stage methods evict cache entries after the prompt pass, which already produced the "
        "one-letter answer (never bold)."
    )


# ------------------------------------------------------------------------------ the shipped weights' record

_RECORD = re.compile(r"^Bundled questions \((\d+), CPU\): (.*?); ", re.MULTILINE)


def _check_line(cells: Sequence[Cell], medium: str) -> str:
    """The uncompressed and checked cells on the bundled questions on the CPU: what ``vlmzip eval --bench
    images`` answers there, and what the test suite re-measures against the shipped weights."""
    wanted = ("none", label(*CHECKED))
    found = {c.label: c for c in cells if c.source == "bundled" and c.device == "cpu" and c.label in wanted}
    if medium != "image" or not found:
        return ""
    listed = ", ".join(f"{found[name].policy} {found[name].accuracy:.1%}" for name in wanted if name in found)
    first = next(iter(found.values()))
    return (
        f"Bundled questions ({len(first.correct)}, CPU): {listed}; what `vlmzip eval --bench images --model "
        f"{first.model}` answers, and what the test suite holds the shipped weights to."
    )


def bundled_record(text: str, model: str) -> dict[str, str]:
    """The recorded accuracies on the bundled image questions of ``model`` in a fidelity page, by policy
    ("none": "90.2%")."""
    table = sections(text.split(BEGIN, 1)[1].split(END, 1)[0])[(model, "image")]
    found = _RECORD.search(table)
    if found is None:
        raise ValueError(f"the {model} image table records no bundled questions")
    return dict(item.rsplit(" ", 1) for item in found.group(2).split(", "))


# ----------------------------------------------------------------------------------------------- the page

_HEADING = re.compile(r"^### (\S+) — (\w+) questions", re.MULTILINE)


def sections(text: str) -> dict[tuple[str, str], str]:
    """The tables of a generated block, by (model, medium); what precedes the first table is dropped."""
    headings = list(_HEADING.finditer(text))
    bounds = [h.start() for h in headings] + [len(text)]
    return {(h.group(1), h.group(2)): text[bounds[i] : bounds[i + 1]].strip() for i, h in enumerate(headings)}


def by_table(cells: Iterable[Cell]) -> dict[tuple[str, str], list[Cell]]:
    """The cells grouped by (model, medium), each group in the order given."""
    ordered = sorted(cells, key=lambda c: (c.model, c.medium))
    return {key: list(group) for key, group in itertools.groupby(ordered, key=lambda c: (c.model, c.medium))}


def write(path: Path, cells: Sequence[Cell], command: str) -> None:
    """Put the tables of ``cells`` into the generated block of ``path``, replacing those of the same model and
    medium and keeping the others (a sweep of one model leaves the rest as they were measured); the hand-written
    text around the block stays. Creates the file if need be."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    head, tail, tables = old, "", {}
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        body, tail = rest.split(END, 1)
        tables = sections(body)
    tables.update({key: section(group, command) for key, group in by_table(cells).items() if _measured(group)})
    order = {name: i for i, name in enumerate(bundled.MODELS)}
    ordered = sorted(tables.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1] != "image"))
    block = "\n\n".join([BEGIN, *(table for _, table in ordered), END])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + block + (tail or "\n"), encoding="utf-8")


def _measured(cells: Sequence[Cell]) -> bool:
    """Whether a group holds a table (not only the CPU check of the bundled questions)."""
    return any(not c.check for c in cells)


def summary(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """The numbers of every table for ``--json``: each cell's accuracy, interval, equivalent tokens and its
    paired difference with random pruning at the same keep."""
    out = []
    for (model, medium), group in by_table(c for c in cells if not c.check).items():
        table = {c.label: c for c in group}
        rows = []
        for cell in group:
            right, n = cell.correct.count("1"), len(cell.correct)
            row = {"label": cell.label, "policy": cell.policy, "stage": cell.stage, "accuracy": cell.accuracy}
            row.update(zip(("low", "high"), wilson(right, n)), equivalent=cell.equivalent, seconds=cell.seconds)
            random = table.get(label("random", cell.keep)) if cell.method not in ("", "random") else None
            if random is not None:
                row["minus_random"] = asdict(_difference(cell, random))
            rows.append(row)
        n = len(group[0].correct)
        out.append({"model": model, "medium": medium, "source": group[0].source, "questions": n, "cells": rows})
    return out
