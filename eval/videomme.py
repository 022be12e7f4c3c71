"""Video-MME, the data side: read a local copy, sample and decode frames, subtitles, prompts, answers, scores.

Video-MME (900 videos, 2,700 four-option questions, three per video) may not be redistributed, so vlmzip ships
none of it and never downloads anything: the user points :func:`load` at a copy. Every layout found in the wild
is read:

- Hugging Face (``lmms-lab/Video-MME``): ``videomme/test-00000-of-00001.parquet``, videos unzipped in ``data/``
  or zipped in ``videos_chunked_NN.zip`` (members ``data/{videoID}.mp4``), subtitles in ``subtitle/`` or
  ``subtitle.zip`` (members ``subtitle/{videoID}.srt``);
- VLMEvalKit: ``Video-MME.tsv`` (``candidates`` a stringified list), ``video/``, ``subtitle/``;
- the authors' JSON: a list of videos, each with a nested ``questions`` list (``output_template.json`` keys).

Videos are ``.mp4``, ``.MP4`` or ``.mkv``, looked up in ``data/``, ``video/``, ``videos/`` and then the zips. A
copy with some videos missing is accepted and flagged ``partial``; their questions become error records, never
a crash (unless ``missing="fail"``).

The pipeline for one run::

    data = load(root)
    questions = select(data, durations=["short"], limit=300)
    for sample in iter_samples(data, questions, Sampling(frames=32), subtitles=True):
        response = model(sample.frames, sample.prompt) if sample.error is None else None
        record = score(sample, response)       # -> write record.to_dict() as a JSON line
    summary = summarize(records)               # accuracy overall / by duration, domain, sub-category, task

Prompts: ``official`` (the authors' README text) by default, ``lmms-eval`` and ``vlmevalkit`` reproduce those
harnesses' texts (see :data:`TEMPLATES` for the exact sources). In subtitle runs every template gets the same
subtitle text, the cues shown at the sampled frames' timestamps; a video without a subtitle file gets the
official prompt without subtitles ("No subtitles available" in lmms-eval's, an empty list in VLMEvalKit's).

Each video is decoded once for its three questions. Frame indices count decoded frames in presentation order
from 0; timestamps are seconds from the stream start. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import ast
import contextlib
import csv
import hashlib
import html
import json
import math
import numbers
import re
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from vlmzip.errors import InputError

__all__ = [
    "DOMAINS",
    "DURATIONS",
    "EXTRACTORS",
    "LETTERS",
    "MEDIA",
    "SAMPLERS",
    "SUB_CATEGORIES",
    "TASK_TYPES",
    "TEMPLATES",
    "VIDEO_EXTENSIONS",
    "Clip",
    "Cue",
    "Dataset",
    "FileRef",
    "Question",
    "Record",
    "Sample",
    "Sampling",
    "Template",
    "build_prompt",
    "decode",
    "extract_answer",
    "iter_samples",
    "load",
    "normalize_options",
    "parse_srt",
    "read_clip",
    "read_subtitles",
    "sample_frames",
    "score",
    "select",
    "subtitles_at",
    "summarize",
    "wilson_interval",
]

LETTERS = ("A", "B", "C", "D")
DURATIONS = ("short", "medium", "long")
DOMAINS = (
    "Knowledge",
    "Film & Television",
    "Sports Competition",
    "Artistic Performance",
    "Life Record",
    "Multilingual",
)
SUB_CATEGORIES = (
    "Humanity & History",
    "Literature & Art",
    "Biology & Medicine",
    "Finance & Commerce",
    "Astronomy",
    "Geography",
    "Law",
    "Life Tip",
    "Technology",
    "Animation",
    "Movie & TV Show",
    "Documentary",
    "News Report",
    "Esports",
    "Basketball",
    "Football",
    "Athletics",
    "Other Sports",
    "Stage Play",
    "Magic Show",
    "Variety Show",
    "Acrobatics",
    "Handicraft",
    "Food",
    "Fashion",
    "Daily Life",
    "Travel",
    "Pet & Animal",
    "Exercise",
    "Multilingual",
)
TASK_TYPES = (
    "Temporal Perception",
    "Spatial Perception",
    "Attribute Perception",
    "Action Recognition",
    "Object Recognition",
    "OCR Problems",
    "Counting Problem",
    "Temporal Reasoning",
    "Spatial Reasoning",
    "Action Reasoning",
    "Object Reasoning",
    "Information Synopsis",
)
VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv")
SAMPLERS = ("linspace", "centered")

PARQUET = "videomme/test-00000-of-00001.parquet"
TSV = "Video-MME.tsv"
VIDEO_DIRS = ("data", "video", "videos")
VIDEO_ZIPS = "videos_chunked_*.zip"
SUBTITLE_DIRS = ("subtitle", "subtitles")
SUBTITLE_ZIP = "subtitle.zip"
_EXPECTED = (
    f"{PARQUET} (Hugging Face lmms-lab/Video-MME), {TSV} (VLMEvalKit) or a *.json list of videos with nested "
    "'questions' (the authors' format)"
)


# --------------------------------------------------------------------------------------------------------------
# Questions and the local copy


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


@dataclass(frozen=True)
class FileRef:
    """A file on disk, or a member of a zip archive on disk (``member`` set)."""

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        if self.member is None:
            with open(self.path, "rb") as handle:
                yield handle
        else:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as handle:
                yield handle  # a seekable stream: PyAV reads it without extracting the member

    def read_text(self) -> str:
        with self.open() as handle:
            return handle.read().decode("utf-8-sig", errors="replace")


@dataclass(frozen=True)
class Dataset:
    """A local Video-MME copy: its questions, where each video and subtitle file is, and what is missing.

    ``layout`` is ``"huggingface"``, ``"vlmevalkit"`` or ``"authors-json"``; ``videos`` and ``subtitles`` map a
    video file stem to its file; ``missing_videos`` lists the stems some question needs but no file provides
    (``partial`` then); ``manifest_sha256`` hashes the question list (sorted by id) so result files can say
    which questions they were scored on.
    """

    root: Path
    layout: str
    annotation: Path
    questions: tuple[Question, ...] = field(repr=False)
    videos: Mapping[str, FileRef] = field(repr=False)
    subtitles: Mapping[str, FileRef] = field(repr=False)
    missing_videos: tuple[str, ...]
    manifest_sha256: str
    notes: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.missing_videos)

    def summary(self) -> dict[str, Any]:
        """What a result file should record about the copy it was computed on."""
        stems = {q.video_file_stem for q in self.questions}
        return {
            "root": str(self.root),
            "layout": self.layout,
            "annotation": str(self.annotation),
            "questions": len(self.questions),
            "videos": len(stems),
            "videos_found": len(stems) - len(self.missing_videos),
            "subtitles_found": len(stems & set(self.subtitles)),
            "partial": self.partial,
            "missing_videos": list(self.missing_videos),
            "manifest_sha256": self.manifest_sha256,
            "notes": list(self.notes),
        }


def load(root: str | Path, *, require_videos: bool = True) -> Dataset:
    """Read and validate the local copy under ``root`` (or the annotation file ``root`` itself). No network.

    Raises :class:`InputError` when no annotation file is found, when it is invalid (duplicate question ids, not
    four options, an answer that is not A-D, an unknown duration), or when no video at all is found (unless
    ``require_videos=False``: questions only, e.g. to re-score saved responses).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(f"Video-MME directory {root} does not exist: pass the folder that holds {_EXPECTED}")
    if root.is_file():
        annotation = root
        root = root.parent.parent if root.parent.name == "videomme" else root.parent
        layout, rows = _read_annotation(annotation)
        if layout is None:
            raise InputError(f"{annotation} is not a Video-MME annotation file: expected {_EXPECTED}")
    else:
        layout, annotation, rows = _find_annotation(root)
    questions, notes = _questions(layout, annotation, rows)
    videos = _find_media(root, VIDEO_DIRS, VIDEO_EXTENSIONS, sorted(root.glob(VIDEO_ZIPS)))
    subtitles = _find_media(root, SUBTITLE_DIRS, (".srt", ".SRT"), [p for p in [root / SUBTITLE_ZIP] if p.is_file()])
    needed = sorted({q.video_file_stem for q in questions})
    missing = tuple(stem for stem in needed if stem not in videos)
    if require_videos and len(missing) == len(needed):
        raise InputError(
            f"found the Video-MME questions ({annotation}) but none of their {len(needed)} videos under {root}: "
            f"expected {{videoID}}.mp4/.MP4/.mkv in {', '.join(d + '/' for d in VIDEO_DIRS)} or in "
            f"{VIDEO_ZIPS} archives (e.g. {needed[0]}.mp4); unzip or copy the videos there, or pass "
            "require_videos=False to load the questions only"
        )
    return Dataset(
        root=root,
        layout=layout,
        annotation=annotation,
        questions=tuple(questions),
        videos=videos,
        subtitles=subtitles,
        missing_videos=missing,
        manifest_sha256=manifest_hash(questions),
        notes=tuple(notes),
    )


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


def _find_annotation(root: Path) -> tuple[str, Path, list[dict[str, Any]]]:
    candidates = [root / PARQUET, root / TSV, *sorted(root.glob("*.json"))]
    for path in candidates:
        if path.is_file():
            layout, rows = _read_annotation(path)
            if layout is not None:
                return layout, path, rows
    raise InputError(
        f"no Video-MME copy found under {root}: expected one of {_EXPECTED}; point the data path at the folder "
        "that holds it (vlmzip never downloads Video-MME)"
    )


def _read_annotation(path: Path) -> tuple[str | None, list[dict[str, Any]]]:
    """(layout, rows) of an annotation file; (None, []) for a JSON file of another shape."""
    try:
        return _read_annotation_file(path)
    except InputError:
        raise
    except Exception as error:  # pyarrow, csv and decoding errors alike: a damaged or truncated file
        raise InputError(
            f"cannot read the Video-MME annotations {path}: {type(error).__name__}: {error}; the file looks damaged "
            "or truncated: copy it again from the benchmark's source"
        ) from error


def _read_annotation_file(path: Path) -> tuple[str | None, list[dict[str, Any]]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as error:
            raise InputError(f"reading {path} needs pyarrow: pip install pyarrow") from error
        return "huggingface", pq.read_table(path).to_pylist()
    if path.suffix == ".tsv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return "vlmevalkit", list(csv.DictReader(handle, delimiter="\t"))
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None, []
        if isinstance(data, list) and data and all(isinstance(v, dict) and "questions" in v for v in data):
            return "authors-json", data
    return None, []


def _questions(layout: str, path: Path, rows: list[dict[str, Any]]) -> tuple[list[Question], list[str]]:
    notes: list[str] = []
    if layout == "huggingface":
        raw = [_hf_row(row) for row in rows]
    elif layout == "vlmevalkit":
        raw, note = _tsv_rows(rows)
        notes += [note] if note else []
    else:
        raw = [_json_row(video, question) for video in rows for question in video.get("questions", [])]
    problems: list[str] = []
    questions = [q for q in (_validated(r, problems) for r in raw) if q is not None]
    counts = Counter(q.question_id for q in questions)
    problems += [f"question id {qid!r} appears {n} times" for qid, n in counts.items() if n > 1]
    if not questions and not problems:
        problems.append("it holds no questions")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
        raise InputError(
            f"invalid Video-MME annotations in {path} ({len(problems)} problem(s)): {shown}. Fix these rows or "
            "replace the file with an unmodified copy of the benchmark"
        )
    return questions, notes


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _hf_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "question_id": _text(row.get("question_id")),
        "video_id": _text(row.get("video_id")),
        "video_file_stem": _text(row.get("videoID")) or _youtube_id(row.get("url")) or _text(row.get("video_id")),
        "duration": _text(row.get("duration")),
        "domain": _text(row.get("domain")),
        "sub_category": _text(row.get("sub_category")),
        "task_type": _text(row.get("task_type")),
        "question": _text(row.get("question")),
        "options": list(row.get("options") or []),
        "answer": _text(row.get("answer")),
    }


def _tsv_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """VLMEvalKit's TSV has no question or video numbers: derive "001-1" ids when its ``index`` allows it.

    VLMEvalKit writes the Hugging Face rows in order with ``index`` = row number, three per video, so video
    ``index // 3 + 1`` and question ``index % 3 + 1`` reproduce the benchmark's ids when every triple holds one
    video. Otherwise ids are ``{videoID}-{k}`` in file order.
    """
    out: list[dict[str, Any]] = []
    for row in rows:
        stem = _text(row.get("video")) or Path(_text(row.get("video_path"))).stem
        try:
            options = ast.literal_eval(_text(row.get("candidates")) or "[]")
        except (ValueError, SyntaxError):
            options = []
        out.append(
            {
                "question_id": _text(row.get("question_id")),
                "video_id": _text(row.get("video_id")),
                "video_file_stem": stem,
                "duration": _text(row.get("duration")),
                "domain": _text(row.get("domain")),
                "sub_category": _text(row.get("sub_category")),
                "task_type": _text(row.get("task_type")),
                "question": _text(row.get("question")),
                "options": options if isinstance(options, list | tuple) else [],
                "answer": _text(row.get("answer")),
                "_index": _text(row.get("index")),
            }
        )
    if all(r["question_id"] and r["video_id"] for r in out):
        note = None
    elif _triples_hold_one_video(out):
        for r in out:
            group, k = divmod(int(r["_index"]), 3)
            r["question_id"] = r["question_id"] or f"{group + 1:03d}-{k + 1}"
            r["video_id"] = r["video_id"] or f"{group + 1:03d}"
        note = "question ids derived from the TSV index (video = index // 3 + 1, question = index % 3 + 1)"
    else:
        seen: Counter[str] = Counter()
        for r in out:
            seen[r["video_file_stem"]] += 1
            r["question_id"] = r["question_id"] or f"{r['video_file_stem']}-{seen[r['video_file_stem']]}"
            r["video_id"] = r["video_id"] or r["video_file_stem"]
        note = "question ids derived as {videoID}-{k} (the TSV index does not group three rows per video)"
    for r in out:
        del r["_index"]
    return out, note


def _triples_hold_one_video(rows: list[dict[str, Any]]) -> bool:
    group_video: dict[int, str] = {}
    video_group: dict[str, int] = {}
    for r in rows:
        if not r["_index"].isdigit():
            return False
        group = int(r["_index"]) // 3
        if group_video.setdefault(group, r["video_file_stem"]) != r["video_file_stem"]:
            return False
        if video_group.setdefault(r["video_file_stem"], group) != group:
            return False
    return bool(rows)


def _json_row(video: Mapping[str, Any], question: Mapping[str, Any]) -> dict[str, Any]:
    def pick(*keys: str) -> str:
        return next((_text(video[k]) for k in keys if _text(video.get(k))), "")

    video_id = pick("video_id")
    return {
        "question_id": _text(question.get("question_id")),
        "video_id": video_id,
        "video_file_stem": pick("videoID") or _youtube_id(video.get("url")) or video_id,
        "duration": pick("duration", "duration_category"),
        "domain": pick("domain", "video_category"),
        "sub_category": pick("sub_category", "video_subcategory"),
        "task_type": _text(question.get("task_type")),
        "question": _text(question.get("question")),
        "options": list(question.get("options") or question.get("choices") or []),
        "answer": _text(question.get("answer")),
    }


def _youtube_id(url: Any) -> str:
    match = re.search(r"(?:[?&]v=|youtu\.be/|/shorts/)([\w-]{6,})", _text(url))
    return match.group(1) if match else ""


_OPTION_PREFIX = re.compile(r"^\(?([A-D])[.):]\s*")


def normalize_options(options: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Options (one per letter, in order) as ``"A. text"``: each may be labelled (``"A. x"``, ``"(A) x"``,
    ``"A) x"``, ``"A: x"``) with its own letter, or plain. Returns (normalised options, problems)."""
    normalized, problems = [], []
    for letter, value in zip(LETTERS, options):
        option = _text(value)
        match = _OPTION_PREFIX.match(option)
        if match and match.group(1) != letter:
            problems.append(f"option {letter} is labelled {match.group(1)} ({option!r})")
        normalized.append(f"{letter}. {option[match.end() :] if match else option}")
    return normalized, problems


def _validated(raw: Mapping[str, Any], problems: list[str]) -> Question | None:
    qid = raw["question_id"] or "?"
    before = len(problems)
    if not raw["question_id"]:
        problems.append(f"a question of video {raw['video_file_stem'] or '?'} has no question_id")
    if not raw["video_file_stem"]:
        problems.append(f"question {qid}: no video id (videoID)")
    if raw["duration"] not in DURATIONS:
        problems.append(f"question {qid}: duration {raw['duration']!r} is not one of {', '.join(DURATIONS)}")
    if raw["answer"] not in LETTERS:
        problems.append(f"question {qid}: answer {raw['answer']!r} is not one of A-D")
    if len(raw["options"]) != 4:
        problems.append(f"question {qid}: {len(raw['options'])} options, expected 4")
    normalized, wrong = normalize_options(raw["options"])
    problems += [f"question {qid}: {problem}" for problem in wrong]
    if len(problems) > before:
        return None
    return Question(
        question_id=raw["question_id"],
        video_id=raw["video_id"] or raw["video_file_stem"],
        video_file_stem=raw["video_file_stem"],
        duration=raw["duration"],
        domain=raw["domain"],
        sub_category=raw["sub_category"],
        task_type=raw["task_type"],
        question=raw["question"],
        options=tuple(normalized),  # type: ignore[arg-type]
        answer=raw["answer"],
    )


def _find_media(root: Path, dirs: Sequence[str], extensions: Sequence[str], zips: Sequence[Path]) -> dict[str, FileRef]:
    """Stem -> file, unzipped folders first (in ``dirs`` order), then zip members; earlier extensions win."""
    rank = {ext: i for i, ext in enumerate(extensions)}
    found: dict[str, tuple[int, int, FileRef]] = {}

    def offer(stem: str, ext: str, source: int, ref: FileRef) -> None:
        key = (source, rank[ext])
        if stem not in found or key < found[stem][:2]:
            found[stem] = (*key, ref)

    for source, name in enumerate(dirs):
        folder = root / name
        if folder.is_dir():
            for path in folder.iterdir():
                if path.suffix in rank and path.is_file():
                    offer(path.stem, path.suffix, source, FileRef(path))
    for source, archive in enumerate(zips, start=len(dirs)):
        try:
            with zipfile.ZipFile(archive) as handle:
                names = handle.namelist()
        except (OSError, zipfile.BadZipFile):
            continue  # an unreadable archive: its videos show up as missing
        for member in names:
            base = Path(member)
            if base.suffix in rank and not member.endswith("/"):
                offer(base.stem, base.suffix, source, FileRef(archive, member))
    return {stem: entry[2] for stem, entry in sorted(found.items())}


def select(
    data: Dataset | Sequence[Question],
    *,
    durations: Iterable[str] | None = None,
    limit: int | None = None,
    available_only: bool = False,
) -> list[Question]:
    """The questions to evaluate, in dataset order.

    ``durations`` keeps only those duration groups (a list, or a string such as ``"short,medium"``). ``limit``
    keeps ``limit`` questions stratified by duration: each group gets a share proportional to its size (largest
    remainders, ties in short/medium/long order), filled with whole videos taken in the order of the SHA-256 of
    their file stem — deterministic, independent of the file's row order, and it decodes as few videos as
    possible. ``available_only`` drops questions whose video is
    missing from a partial copy (needs a :class:`Dataset`).
    """
    questions = list(data.questions if isinstance(data, Dataset) else data)
    if durations is not None:
        wanted = durations.split(",") if isinstance(durations, str) else list(durations)
        unknown = [d for d in wanted if d not in DURATIONS]
        if unknown:
            raise InputError(f"unknown duration(s) {', '.join(map(repr, unknown))}: expected {', '.join(DURATIONS)}")
        questions = [q for q in questions if q.duration in wanted]
    if available_only:
        if not isinstance(data, Dataset):
            raise InputError("available_only=True needs the Dataset (to know which videos exist), not a list")
        questions = [q for q in questions if q.video_file_stem in data.videos]
    if limit is not None and limit < 0:
        raise InputError(f"limit={limit} must be >= 0")
    if limit is None or limit >= len(questions):
        return questions
    groups = {d: [q for q in questions if q.duration == d] for d in DURATIONS}
    total = len(questions)
    shares = {d: Fraction(limit * len(g), total) for d, g in groups.items()}
    quota = {d: math.floor(s) for d, s in shares.items()}
    by_remainder = sorted(DURATIONS, key=lambda d: (-(shares[d] - quota[d]), DURATIONS.index(d)))
    for d in by_remainder[: limit - sum(quota.values())]:
        quota[d] += 1
    keep: set[str] = set()
    for d, group in groups.items():
        by_video: dict[str, list[Question]] = {}
        for q in group:
            by_video.setdefault(q.video_file_stem, []).append(q)
        order = sorted(by_video, key=lambda stem: hashlib.sha256(stem.encode()).hexdigest())
        chosen = [q for stem in order for q in by_video[stem]][: quota[d]]
        keep.update(q.question_id for q in chosen)
    return [q for q in questions if q.question_id in keep]


# --------------------------------------------------------------------------------------------------------------
# Frame sampling and decoding


@dataclass(frozen=True)
class Sampling:
    """Which frames to read: ``frames=N`` with a sampler, or ``fps=F`` (optionally capped by ``max_frames``).

    ``linspace`` is lmms-eval's ``np.linspace(0, N-1, n).astype(int)`` (both ends); ``centered`` is VLMEvalKit's
    ``int(i * (N / (n+1)))`` for i = 1..n (its exact float expression). Both repeat frames when n > N, as those
    harnesses do. ``fps`` is VLMEvalKit's: ``int(N / video_fps * F)`` frames (at least one), frame
    ``int(i * video_fps / F)``; when that exceeds ``max_frames``, ``max_frames`` of them are kept, evenly spaced
    (linspace over the list). With ``frames``, ``max_frames`` caps ``frames``. Neither given: ``frames=32``.
    """

    frames: int | None = None
    sampler: str = "linspace"
    fps: float | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.frames is not None and self.fps is not None:
            raise InputError(f"give frames or fps, not both (frames={self.frames}, fps={self.fps})")
        if self.frames is None and self.fps is None:
            object.__setattr__(self, "frames", 32)
        if self.frames is not None and (not isinstance(self.frames, numbers.Integral) or self.frames < 1):
            raise InputError(f"frames={self.frames!r} must be a positive integer")
        if self.fps is not None and not self.fps > 0:
            raise InputError(f"fps={self.fps!r} must be > 0")
        if self.max_frames is not None and (not isinstance(self.max_frames, numbers.Integral) or self.max_frames < 1):
            raise InputError(f"max_frames={self.max_frames!r} must be a positive integer")
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")

    def describe(self) -> str:
        if self.fps is not None:
            return f"fps={self.fps:g}" + (f",max_frames={self.max_frames}" if self.max_frames else "")
        return f"frames={self.frames},sampler={self.sampler}" + (
            f",max_frames={self.max_frames}" if self.max_frames else ""
        )

    def indices(self, n_total: int, video_fps: float | None = None) -> list[int]:
        if n_total < 1:
            raise InputError(f"cannot sample frames from a video of {n_total} frames")
        if self.fps is not None:
            if not video_fps or video_fps <= 0:
                raise InputError("fps sampling needs the video's frame rate")
            required = max(1, int(n_total / video_fps * self.fps))
            step = video_fps / self.fps
            picked = [min(int(i * step), n_total - 1) for i in range(required)]
            if self.max_frames is not None and len(picked) > self.max_frames:
                keep = np.linspace(0, len(picked) - 1, self.max_frames).astype(int)
                picked = [picked[k] for k in keep]
            return picked
        n = self.frames if self.max_frames is None else min(self.frames, self.max_frames)  # type: ignore[type-var]
        assert n is not None
        if self.sampler == "linspace":
            return [int(i) for i in np.linspace(0, n_total - 1, n).astype(int)]
        step = n_total / (n + 1)
        return [int(i * step) for i in range(1, n + 1)]


def sample_frames(
    n_total: int,
    video_fps: float | None = None,
    *,
    frames: int | None = None,
    sampler: str = "linspace",
    fps: float | None = None,
    max_frames: int | None = None,
) -> list[int]:
    """Frame indices to read from a video of ``n_total`` frames at ``video_fps`` (see :class:`Sampling`)."""
    return Sampling(frames=frames, sampler=sampler, fps=fps, max_frames=max_frames).indices(n_total, video_fps)


@dataclass
class Clip:
    """Decoded frames (RGB ``uint8`` arrays, H x W x 3) in the requested order, their actual frame indices and
    timestamps (seconds from the stream start), and the video's frame count and rate.

    An index past the last decodable frame (a container that over-reports its length) yields the last frame,
    and ``indices`` records that frame's index.
    """

    frames: list[np.ndarray]
    indices: list[int]
    timestamps: list[float]
    n_frames: int
    fps: float

    def images(self) -> list[Any]:
        """The frames as ``PIL.Image`` objects."""
        from PIL import Image

        return [Image.fromarray(frame) for frame in self.frames]


_SEEK_MIN_GAP = 300  # auto mode seeks when sampled frames are this far apart on average (~10 s at 30 fps)
_SEEK_REDECODE_GAP = 120  # in seek mode, decode forward rather than seek when the next frame is this close


def _av() -> Any:
    try:
        import av
    except ImportError as error:
        raise InputError(
            "decoding Video-MME videos needs PyAV: pip install 'vlmzip[video]' (or pip install av)"
        ) from error
    return av


def read_clip(
    source: FileRef | str | Path,
    sampling: Sampling | None = None,
    *,
    max_side: int | None = None,
    seek: bool | None = None,
) -> Clip:
    """Open a video once, count its frames, sample them with ``sampling`` and decode those frames."""
    sampling = sampling or Sampling()
    with _open_video(source) as (container, stream):
        n_frames, fps = _probe(container, stream)
        return _decode_open(container, stream, sampling.indices(n_frames, fps), n_frames, fps, max_side, seek)


def decode(
    source: FileRef | str | Path,
    indices: Sequence[int],
    *,
    max_side: int | None = None,
    seek: bool | None = None,
) -> Clip:
    """Decode the frames at ``indices`` (in that order, repeats allowed) from a video file or zip member.

    ``max_side`` shrinks frames so that their longer side is at most that many pixels (aspect kept). ``seek``:
    ``False`` decodes sequentially from the start (exact for any stream); ``True`` seeks to the keyframe before
    each far-apart frame and identifies frames by timestamp, which is exact for constant-frame-rate streams
    only, so a stream whose frame count, duration and rate disagree (or whose timestamps turn out not to be one
    frame apart) is decoded sequentially instead; ``None`` (default) seeks when the frames are on average more
    than 300 apart.
    """
    with _open_video(source) as (container, stream):
        n_frames, fps = _probe(container, stream)
        return _decode_open(container, stream, list(indices), n_frames, fps, max_side, seek)


@contextlib.contextmanager
def _open_video(source: FileRef | str | Path) -> Iterator[tuple[Any, Any]]:
    av = _av()
    ref = source if isinstance(source, FileRef) else FileRef(Path(source))
    with ref.open() as handle, av.open(handle, mode="r") as container:
        if not container.streams.video:
            raise InputError(f"{ref} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream


def _probe(container: Any, stream: Any) -> tuple[int, float]:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    n_frames = int(stream.frames or 0)
    if n_frames <= 0:  # e.g. Matroska stores no frame count: count the packets (demuxing only, no decoding)
        n_frames = sum(1 for packet in container.demux(stream) if packet.size)
        container.seek(0)
    if n_frames <= 0:
        raise InputError("the video stream holds no frames")
    if not rate:
        seconds = (stream.duration * stream.time_base) if stream.duration else container.duration / 1_000_000
        if not seconds:
            raise InputError("cannot tell the video's frame rate")
        rate = Fraction(n_frames) / Fraction(seconds)
    return n_frames, float(rate)


def _decode_open(
    container: Any,
    stream: Any,
    indices: list[int],
    n_frames: int,
    fps: float,
    max_side: int | None,
    seek: bool | None,
) -> Clip:
    if not indices:
        return Clip([], [], [], n_frames, fps)
    if min(indices) < 0:
        raise InputError(f"frame indices must be >= 0, got {min(indices)}")
    wanted = sorted(set(indices))
    size = _target_size(stream.codec_context.width, stream.codec_context.height, max_side)
    rate = stream.average_rate
    if seek is None:
        seek = bool(rate) and len(wanted) > 1 and (wanted[-1] - wanted[0]) / (len(wanted) - 1) > _SEEK_MIN_GAP
    got = None
    if seek and rate and stream.time_base and _constant_rate(container, stream, n_frames):
        got = _decode_seeking(container, stream, wanted, Fraction(rate), size)
        if got is None:
            container.seek(0)
    if got is None:
        got = _decode_sequential(container, stream, wanted, size)
    if not got:
        raise InputError("no frame could be decoded")
    last = max(got)
    resolved = [i if i in got else last for i in indices]
    return Clip(
        frames=[got[i][0] for i in resolved],
        indices=resolved,
        timestamps=[got[i][1] for i in resolved],
        n_frames=n_frames,
        fps=fps,
    )


def _constant_rate(container: Any, stream: Any, n_frames: int) -> bool:
    """Whether frame count, duration and average rate agree (within 2 frames): the condition for seeking by time.

    Frames are then identified by timestamp; a variable-rate stream would shift the indices, so it is decoded
    sequentially instead.
    """
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000
    else:
        return False
    return abs(n_frames - seconds * float(stream.average_rate)) <= 2


def _target_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    if max_side is None or max(width, height) <= max_side or not width or not height:
        return None
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _convert(frame: Any, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1])


def _start_pts(stream: Any) -> int:
    return int(stream.start_time) if stream.start_time is not None else 0


def _seconds(frame: Any, stream: Any, index: int, rate: float) -> float:
    if frame.pts is None or not stream.time_base:
        return index / rate if rate else 0.0
    return float((frame.pts - _start_pts(stream)) * stream.time_base)


def _decode_sequential(
    container: Any, stream: Any, wanted: list[int], size: tuple[int, int] | None
) -> dict[int, tuple[np.ndarray, float]]:
    targets = set(wanted)
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    got: dict[int, tuple[np.ndarray, float]] = {}
    previous: tuple[int, Any] | None = None
    for index, frame in enumerate(container.decode(stream)):
        if index in targets:
            got[index] = (_convert(frame, size), _seconds(frame, stream, index, rate))
        previous = (index, frame)
        if index >= wanted[-1]:
            break
    if previous is not None and previous[0] not in got and previous[0] < wanted[-1]:
        index, frame = previous  # the stream ended before the last wanted index: keep its last frame
        got[index] = (_convert(frame, size), _seconds(frame, stream, index, rate))
    return got


def _decode_seeking(
    container: Any, stream: Any, wanted: list[int], rate: Fraction, size: tuple[int, int] | None
) -> dict[int, tuple[np.ndarray, float]] | None:
    """Seek-based decoding; None when timestamps betray a variable rate (the caller then decodes sequentially)."""
    base, time_base = _start_pts(stream), stream.time_base
    targets = set(wanted)
    got: dict[int, tuple[np.ndarray, float]] = {}
    frames: Iterator[Any] | None = None
    current = -1  # index of the last decoded frame; -1 right after a seek
    last: tuple[int, Any] | None = None
    for target in wanted:
        if target in got:
            continue
        fresh = frames is None or target - current > _SEEK_REDECODE_GAP
        if fresh:
            container.seek(base + int(Fraction(target) / rate / time_base), stream=stream, backward=True)
            frames, current = container.decode(stream), -1
        for frame in frames:  # type: ignore[union-attr]
            if frame.pts is None:
                return None
            index = round((frame.pts - base) * time_base * rate)
            if (index > target) if fresh else (index != current + 1):
                return None  # landed after the target, or timestamps are not one frame apart
            fresh, current, last = False, index, (index, frame)
            if index in targets:
                got[index] = (_convert(frame, size), float((frame.pts - base) * time_base))
            if index >= target:
                break
        else:
            break  # end of stream: the remaining targets resolve to the last frame
        if target not in got:
            return None  # the target's timestamp was skipped: not a constant-rate stream
    if last is not None and last[0] not in got and any(t > last[0] for t in wanted):
        index, frame = last
        got[index] = (_convert(frame, size), float((frame.pts - base) * time_base))
    return got


# --------------------------------------------------------------------------------------------------------------
# Subtitles


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


# --------------------------------------------------------------------------------------------------------------
# Prompts


@dataclass(frozen=True)
class Template:
    """A named prompt format. ``render(question, subtitles, medium)`` builds the text (``subtitles=None``: the
    prompt without subtitles). ``medium`` is what the question is about: ``"video"`` (Video-MME's texts),
    ``"image"`` or ``"images"`` (the same texts with "the video" in the instruction replaced, and VLMEvalKit's
    "These are the frames of a video." left out). ``no_subtitle_file`` is what subtitle runs pass for a video
    that has no subtitle file (``None``: that video gets the prompt without subtitles)."""

    name: str
    source: str
    render: Callable[[Question, str | None, str], str] = field(repr=False)
    no_subtitle_file: str | None = None


MEDIA = ("video", "image", "images")


def _instruction(medium: str, subtitles: bool = False) -> str:
    source = f"the {medium} and the subtitles" if subtitles else f"the {medium}"
    return (
        f"Select the best answer to the following multiple-choice question based on {source}. "
        "Respond with only the letter (A, B, C, or D) of the correct option."
    )


def _options(question: Question) -> str:
    return "\n".join(question.options)


def _official(question: Question, subtitles: str | None, medium: str = "video") -> str:
    body = f"{_instruction(medium)}\n{question.question}\n{_options(question)}\nThe best answer is:"
    return body if subtitles is None else f"This video's subtitles are listed below:\n{subtitles}\n{body}"


def _lmms_eval(question: Question, subtitles: str | None, medium: str = "video") -> str:
    qa = f"{_instruction(medium, subtitles=True)}\n{question.question}\n{_options(question)}\n"
    if subtitles is None:
        return qa + "\nAnswer with the option's letter from the given choices directly."
    return f"This video's subtitles are listed below: \n{subtitles}\n{qa}The best answer is:"


def _vlmevalkit(question: Question, subtitles: str | None, medium: str = "video") -> str:
    frames = "These are the frames of a video. " if medium == "video" else ""
    if subtitles is not None:
        frames += f"This video's subtitles are listed below:\n{subtitles}\n"
    return f"{frames}{_instruction(medium)}\nQuestion: {question.question}\n{_options(question)}\nAnswer: "


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("official", "Video-MME authors' README (github.com/BradyFU/Video-MME)", _official, None),
        Template(
            "lmms-eval",
            "lmms-eval tasks/videomme/utils.py at 75571cf (2026-08), default model kwargs: videomme_doc_to_text "
            "with post_prompt '\\nAnswer with the option's letter from the given choices directly.' (its "
            "instruction mentions subtitles even without them); videomme_doc_to_text_subtitle with subtitles",
            _lmms_eval,
            "No subtitles available",
        ),
        Template(
            "vlmevalkit",
            "VLMEvalKit vlmeval/dataset/videomme.py at e8e78f0 (2026-08): FRAMES_TMPL_NOSUB/SUB without the "
            "leading newline, then 'Question: {question}\\n{options}\\nAnswer: ', the two messages joined with "
            "nothing between them",
            _vlmevalkit,
            "",
        ),
    )
}


def build_prompt(
    question: Question, subtitles: str | None = None, template: str = "official", medium: str = "video"
) -> str:
    """The question's prompt text in the named template; ``subtitles`` (cue text, possibly ``""``) selects the
    subtitle variant, ``None`` the one without subtitles; ``medium`` is one of :data:`MEDIA`."""
    if medium not in MEDIA:
        raise InputError(f"unknown medium {medium!r}: expected one of {', '.join(MEDIA)}")
    return _template(template).render(question, subtitles, medium)


def _template(name: str) -> Template:
    if name not in TEMPLATES:
        raise InputError(f"unknown prompt template {name!r}: expected one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


# --------------------------------------------------------------------------------------------------------------
# Samples: questions with their frames, subtitles and prompt


@dataclass
class Sample:
    """One question ready for a model: frames, their indices and timestamps, the subtitle text used (``None``
    without subtitles) and the prompt; or ``error`` (missing or undecodable video) with no frames. The questions
    of one video share its frame list (decoded once): treat it as read-only.

    ``medium`` says what the frames are: ``"video"`` (frames of one clip, given to a model as a video where it
    takes videos), ``"image"`` (one picture) or ``"images"`` (several pictures, each its own image; frame
    indices and timestamps are then empty)."""

    question: Question
    prompt: str
    template: str
    sampling: str
    frames: list[np.ndarray] = field(default_factory=list, repr=False)
    frame_indices: list[int] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    subtitles: str | None = None
    error: str | None = None
    medium: str = "video"


def iter_samples(
    data: Dataset,
    questions: Iterable[Question] | None = None,
    sampling: Sampling | None = None,
    *,
    subtitles: bool = False,
    template: str = "official",
    max_side: int | None = None,
    seek: bool | None = None,
    missing: Literal["record", "fail"] = "record",
    workers: int = 0,
) -> Iterator[Sample]:
    """Yield a :class:`Sample` per question (default: all), decoding each video once for all its questions.

    Questions are grouped by video in first-appearance order. A missing or undecodable video yields samples
    with ``error`` set (``missing="record"``) or raises :class:`InputError` (``missing="fail"``). ``workers`` > 0
    decodes up to that many upcoming videos in background threads (results still come in order).
    """
    sampling = sampling or Sampling()
    tmpl = _template(template)
    if missing not in ("record", "fail"):
        raise InputError(f"missing={missing!r}: expected 'record' (an error per question) or 'fail'")
    _av()  # a missing PyAV is a setup problem, not a per-video error
    by_video: dict[str, list[Question]] = {}
    for q in data.questions if questions is None else questions:
        by_video.setdefault(q.video_file_stem, []).append(q)

    def job(stem: str) -> tuple[Clip | None, str | None, str | None]:
        ref = data.videos.get(stem)
        if ref is None:
            where = f"{', '.join(d + '/' for d in VIDEO_DIRS)} and {VIDEO_ZIPS}"
            return None, None, f"video {stem} not found under {data.root} (looked for {stem}.mp4/.MP4/.mkv in {where})"
        try:
            clip = read_clip(ref, sampling, max_side=max_side, seek=seek)
        except Exception as error:  # any decoder failure is recorded against this video's questions
            return None, None, f"cannot decode {ref}: {type(error).__name__}: {error}"
        if not subtitles:
            return clip, None, None
        srt = data.subtitles.get(stem)
        if srt is None:
            return clip, tmpl.no_subtitle_file, None
        try:
            return clip, subtitles_at(read_subtitles(srt), clip.timestamps), None
        except Exception as error:
            return None, None, f"cannot read subtitles {srt}: {type(error).__name__}: {error}"

    for stem, (clip, text, error) in _run_jobs(list(by_video), job, workers):
        if error is not None and missing == "fail":
            raise InputError(f"{error}; pass missing='record' to record it as an error and continue")
        for q in by_video[stem]:
            yield Sample(
                question=q,
                prompt=tmpl.render(q, text),
                template=tmpl.name,
                sampling=sampling.describe(),
                frames=clip.frames if clip else [],
                frame_indices=list(clip.indices) if clip else [],
                timestamps=list(clip.timestamps) if clip else [],
                subtitles=text,
                error=error,
            )


def _run_jobs(keys: list[str], job: Callable[[str], Any], workers: int) -> Iterator[tuple[str, Any]]:
    if workers <= 0:
        for key in keys:
            yield key, job(key)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[str, Future[Any]]] = deque()
        upcoming = iter(keys)
        for key in upcoming:
            pending.append((key, pool.submit(job, key)))
            if len(pending) > workers:
                done_key, future = pending.popleft()
                yield done_key, future.result()
        while pending:
            done_key, future = pending.popleft()
            yield done_key, future.result()


# --------------------------------------------------------------------------------------------------------------
# Answers and scores

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
