"""A generic multiple-choice benchmark read from a JSONL file: ``vlmzip eval --bench mcq --data FILE.jsonl``.

One JSON object per line (blank lines are skipped)::

    {"id": "q1", "question": "What colour is the ball?", "options": ["A. red", "B. blue", "C. green", "D. pink"],
     "answer": "B", "image": "images/q1.png", "category": "colour"}

``id``
    unique in the file (a string or an integer).
``question``
    the question text.
``options``
    exactly four, in A-D order, each either labelled with its own letter (``"A. red"``, ``"(A) red"``,
    ``"A) red"``, ``"A: red"``) or plain (``"red"``); prompts show them as ``"A. red"``. Four, because the
    prompt templates and the answer extraction are Video-MME's, which name the letters A-D.
``answer``
    the correct option's letter, ``"A"``-``"D"`` (lower case accepted).
``image`` | ``images`` | ``video``
    exactly one: a picture, a non-empty list of pictures (each given to the model as its own image), or a video
    (decoded with PyAV, frames sampled like Video-MME's: ``--frames``/``--fps``/``--sampler``). Paths are
    relative to the JSONL file's folder, or absolute.
``category`` (or ``family``)
    optional: results break accuracy down by it (``by_category``); ``category`` wins when both are given.

Other keys are ignored (the bundled image set also carries ``answer_word``, ``params``, ``scene``), so that set
(``vlmzip.eval.bundled.dataset_path("image") / "test.jsonl"``) loads as it is. A malformed file raises
:class:`InputError` listing each bad line and what to change. A missing or unreadable picture or video is not a
file error: that question becomes an error record and the run goes on (``missing="record"``, the default), as in
Video-MME runs, unless ``missing="fail"``.

Prompts are :mod:`~vlmzip.eval.prompts`' templates with "the video" replaced by "the image" / "the images" for
pictures (the ``official`` one is then exactly ``synthetic.mc_prompt(question, "image")``); samples are
:class:`~vlmzip.eval.samples.Sample`, so the runner scores them as every bench's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlmzip.errors import InputError
from vlmzip.eval.prompts import build_prompt
from vlmzip.eval.questions import LETTERS, Question, manifest_hash, normalize_options
from vlmzip.eval.samples import Sample
from vlmzip.eval.video import Clip, Sampling, read_clip, require_av

__all__ = ["MEDIA_KEYS", "Dataset", "Item", "iter_samples", "load", "select"]

MEDIA_KEYS = ("image", "images", "video")
_SHOWN = 8  # problems listed in an error message


@dataclass(frozen=True)
class Item:
    """One question of the file: the question (``video_file_stem`` holds its media paths as written), its
    medium (``"image"``, ``"images"`` or ``"video"``), the media files and the line it came from."""

    question: Question
    medium: str
    paths: tuple[Path, ...]
    line: int


@dataclass(frozen=True)
class Dataset:
    """A validated JSONL file: its items in file order and which of them lack a media file (``partial``)."""

    path: Path
    items: tuple[Item, ...] = field(repr=False)
    missing: tuple[str, ...]
    manifest_sha256: str

    @property
    def partial(self) -> bool:
        return bool(self.missing)

    def summary(self) -> dict[str, Any]:
        """What a run's config should record about the file."""
        return {
            "path": str(self.path),
            "layout": "mcq-jsonl",
            "questions": len(self.items),
            "partial": self.partial,
            "missing_files": list(self.missing),
            "manifest_sha256": self.manifest_sha256,
        }


def load(path: str | Path) -> Dataset:
    """Read and validate ``path`` (a ``.jsonl`` file, or a folder holding exactly one). No file is decoded here;
    missing media files are listed in ``missing``. Raises :class:`InputError` naming each bad line."""
    path = _jsonl(Path(path).expanduser())
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    problems: list[str] = []
    items: list[Item] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        item = _item(path, number, text, problems)
        if item is None:
            continue
        qid = item.question.question_id
        if qid in seen:
            problems.append(f"line {number}: id {qid!r} is already used on line {seen[qid]}: make the ids unique")
            continue
        seen[qid] = number
        items.append(item)
    if not items and not problems:
        problems.append("the file holds no questions: write one JSON object per line")
    if problems:
        shown = "; ".join(problems[:_SHOWN])
        more = f"; ... ({len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        raise InputError(
            f"invalid multiple-choice file {path} ({len(problems)} problem(s)): {shown}{more}. The format is in the "
            "vlmzip.eval.mcq docstring: id, question, four options, answer letter, and one of image/images/video"
        )
    # A missing file is recorded against its question when the samples are made; only all of them missing is fatal.
    missing = tuple(f"line {item.line}: {p}" for item in items for p in item.paths if not p.is_file())
    if missing and all(any(not p.is_file() for p in item.paths) for item in items):
        raise InputError(
            f"none of the media files named in {path} exists (e.g. {missing[0]}); paths are read relative to "
            f"{path.parent}: fix the paths or move the JSONL file next to its media"
        )
    return Dataset(path, tuple(items), missing, manifest_hash(item.question for item in items))


def _jsonl(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.jsonl"))
        if len(found) != 1:
            raise InputError(
                f"{path} is a folder with {len(found)} .jsonl files: pass the multiple-choice file itself with --data"
            )
        return found[0]
    if not path.is_file():
        raise InputError(f"multiple-choice file {path} does not exist: pass a .jsonl file with --data")
    return path


def _item(path: Path, number: int, text: str, problems: list[str]) -> Item | None:
    where = f"line {number}"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(f"{where}: not valid JSON ({error.msg} at column {error.colno}): write one object per line")
        return None
    if not isinstance(row, dict):
        problems.append(f"{where}: a JSON object is expected, got {type(row).__name__}")
        return None
    before = len(problems)
    qid = row.get("id")
    if isinstance(qid, bool) or not isinstance(qid, str | int) or not str(qid).strip():
        problems.append(f"{where}: no 'id' (a non-empty string or integer): give every question a unique id")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        problems.append(f"{where}: no 'question' text")
    options = row.get("options")
    normalized: list[str] = []
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        problems.append(f"{where}: 'options' must be a list of four non-empty strings")
    elif len(options) != len(LETTERS):
        problems.append(f"{where}: {len(options)} options, expected 4 (A-D)")
    else:
        normalized, wrong = normalize_options(options)
        problems += [f"{where}: {p}: label the options A-D in order, or leave the labels out" for p in wrong]
    answer = row.get("answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        problems.append(f"{where}: no 'answer': give the correct option's letter (A, B, C or D)")
    elif not isinstance(answer, str) or answer.strip().upper() not in LETTERS:
        problems.append(f"{where}: answer {answer!r} is not one of A, B, C, D: give the correct option's letter")
    category = row.get("category", row.get("family", ""))
    if isinstance(category, bool) or not isinstance(category, str | int):
        problems.append(f"{where}: 'category' must be a string, got {type(category).__name__}")
    medium, written = _media(row, where, problems)
    if len(problems) > before:
        return None
    paths = tuple(p if p.is_absolute() else path.parent / p for p in (Path(w).expanduser() for w in written))
    return Item(
        question=Question(
            question_id=str(qid).strip(),
            video_id="",
            video_file_stem=";".join(written),
            duration="",
            domain="",
            sub_category="",
            task_type="",
            question=question.strip(),
            options=tuple(normalized),  # type: ignore[arg-type]
            answer=answer.strip().upper(),
            category=str(category).strip(),
        ),
        medium=medium,
        paths=paths,
        line=number,
    )


def _media(row: Mapping[str, Any], where: str, problems: list[str]) -> tuple[str, list[str]]:
    given = [key for key in MEDIA_KEYS if row.get(key) is not None]
    if not given:
        problems.append(f"{where}: no 'image', 'images' or 'video': give exactly one (a path relative to the file)")
        return "", []
    if len(given) > 1:
        problems.append(f"{where}: gives {' and '.join(map(repr, given))}: give exactly one of image, images, video")
        return "", []
    key, value = given[0], row[given[0]]
    if key == "images":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            problems.append(f"{where}: 'images' must be a non-empty list of paths")
            return "", []
        return key, [v.strip() for v in value]
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: {key!r} must be a path (a non-empty string)")
        return "", []
    return key, [value.strip()]


def select(data: Dataset | Iterable[Item], limit: int | None = None) -> list[Item]:
    """The first ``limit`` items in file order (all when ``limit`` is None)."""
    items = list(data.items if isinstance(data, Dataset) else data)
    if limit is not None and limit < 0:
        raise InputError(f"limit={limit} must be >= 0")
    return items if limit is None else items[:limit]


def iter_samples(
    data: Dataset,
    items: Iterable[Item] | None = None,
    sampling: Sampling | None = None,
    *,
    template: str = "official",
    max_side: int | None = None,
    missing: Literal["record", "fail"] = "record",
) -> Iterator[Sample]:
    """A :class:`~vlmzip.eval.samples.Sample` per item (default: all): pictures read with PIL (RGB), a video's frames
    sampled with ``sampling`` and decoded once for consecutive questions about it; ``max_side`` shrinks either
    (aspect kept). A missing or unreadable file gives a sample with ``error`` set (``missing="record"``) or
    raises :class:`InputError` (``missing="fail"``)."""
    sampling = sampling or Sampling()
    if missing not in ("record", "fail"):
        raise InputError(f"missing={missing!r}: expected 'record' (an error per question) or 'fail'")
    items = list(data.items if items is None else items)
    if any(item.medium == "video" for item in items):
        require_av()  # a missing PyAV is a setup problem, not a per-question error
    last: tuple[tuple[Path, ...], Clip | None, str | None] = ((), None, None)
    for item in items:
        if last[0] != item.paths:  # consecutive questions about one file read it once
            last = (item.paths, *_read(item, sampling, max_side))
        _, clip, error = last
        if error is not None and missing == "fail":
            raise InputError(f"{error}; pass missing='record' (--missing record) to record it as an error and go on")
        video = item.medium == "video"
        yield Sample(
            question=item.question,
            prompt=build_prompt(item.question, None, template, item.medium),
            template=template,
            sampling=sampling.describe() if video else item.medium,
            frames=clip.frames if clip else [],
            frame_indices=list(clip.indices) if clip and video else [],
            timestamps=list(clip.timestamps) if clip and video else [],
            error=error,
            medium=item.medium,
        )


def _read(item: Item, sampling: Sampling, max_side: int | None) -> tuple[Clip | None, str | None]:
    """(frames, None) or (None, why not). Pictures come back as a :class:`~vlmzip.eval.video.Clip` without indices."""
    for path in item.paths:
        if not path.is_file():
            kind = "video" if item.medium == "video" else "image"
            return None, f"line {item.line}: {kind} file {path} not found"
    if item.medium == "video":
        try:
            return read_clip(item.paths[0], sampling, max_side=max_side), None
        except Exception as error:  # any decoder failure is recorded against this question
            return None, f"line {item.line}: cannot decode {item.paths[0]}: {type(error).__name__}: {error}"
    frames = []
    for path in item.paths:
        try:
            frames.append(_picture(path, max_side))
        except Exception as error:
            return None, f"line {item.line}: cannot read image {path}: {type(error).__name__}: {error}"
    return Clip(frames, [], [], len(frames), 0.0), None


def _picture(path: Path, max_side: int | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if max_side is not None and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BICUBIC)
    return np.array(rgb)
