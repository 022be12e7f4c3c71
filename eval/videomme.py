"""Video-MME: read a local copy (any published layout) into questions, select them, and make their samples.

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

The pipeline for one run (frame sampling in :mod:`~vlmzip.eval.video`, prompts in :mod:`~vlmzip.eval.prompts`,
scoring in :mod:`~vlmzip.eval.scoring`)::

    data = load(root)
    questions = select(data, durations=["short"], limit=300)
    for sample in iter_samples(data, questions, Sampling(frames=32), subtitles=True):
        response = model(sample.frames, sample.prompt) if sample.error is None else None
        record = score(sample, response)       # -> write record.to_dict() as a JSON line
    summary = summarize(records)               # accuracy overall / by duration, domain, sub-category, task

In subtitle runs every template gets the same subtitle text, the cues shown at the sampled frames' timestamps
(``subtitles_style="lmms-eval"``: the cues lmms-eval 0.7.3 picks, see :mod:`~vlmzip.eval.subtitles`); a
video without a subtitle file gets the official prompt without subtitles ("No subtitles available" in
lmms-eval's, an empty list in VLMEvalKit's). Each video is decoded once for its three questions.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from vlmzip.errors import InputError
from vlmzip.eval.prompts import get_template
from vlmzip.eval.questions import LETTERS, Question, manifest_hash, normalize_options
from vlmzip.eval.samples import ClipRead, Sample, clip_samples
from vlmzip.eval.subtitles import check_style, subtitle_text
from vlmzip.eval.video import FileRef, Sampling, read_clip, require_av

__all__ = [
    "DOMAINS",
    "DURATIONS",
    "PARQUET",
    "SUB_CATEGORIES",
    "TASK_TYPES",
    "TSV",
    "VIDEO_EXTENSIONS",
    "Dataset",
    "iter_samples",
    "load",
    "select",
]

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
# The local copy: layouts, annotations, media files


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
# Samples


def iter_samples(
    data: Dataset,
    questions: Iterable[Question] | None = None,
    sampling: Sampling | None = None,
    *,
    subtitles: bool = False,
    subtitles_style: str = "vlmzip",
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
    ``subtitles_style`` says how the subtitle text is made (:mod:`~vlmzip.eval.subtitles`: ``"vlmzip"``, the cues
    at the frames the model sees; ``"lmms-eval"``, lmms-eval 0.7.3's way).
    """
    sampling = sampling or Sampling()
    tmpl = get_template(template)
    check_style(subtitles_style)
    if missing not in ("record", "fail"):
        raise InputError(f"missing={missing!r}: expected 'record' (an error per question) or 'fail'")
    require_av()  # a missing PyAV is a setup problem, not a per-video error

    def read(stem: str) -> ClipRead:
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
            return clip, subtitle_text(srt, clip, subtitles_style), None
        except Exception as error:
            return None, None, f"cannot read subtitles {srt}: {type(error).__name__}: {error}"

    chosen = data.questions if questions is None else questions
    for sample in clip_samples(chosen, read, sampling, tmpl, missing=missing, workers=workers):
        if sample.subtitles is not None:
            sample.subtitles_style = subtitles_style
        yield sample
