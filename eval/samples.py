"""Samples: a question with the frames, subtitles and prompt a model is given, and the loop that makes them.

:func:`clip_samples` is what every video bench shares: questions grouped by video, each video read once for all
of its questions (optionally in background threads, results still in order), a read failure recorded against
that video's questions or raised. A bench supplies only how to read one video (:data:`ClipRead`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from vlmzip.errors import InputError
from vlmzip.eval.prompts import Template
from vlmzip.eval.questions import Question
from vlmzip.eval.video import Clip, Sampling

__all__ = ["ClipRead", "Sample", "clip_samples"]

ClipRead = tuple[Clip | None, str | None, str | None]
"""What reading one video gives: its clip, the subtitle text for the prompt (``None``: the prompt without
subtitles) and an error (``None`` when it was read)."""


@dataclass
class Sample:
    """One question ready for a model: frames, their indices and timestamps, the subtitle text used (``None``
    without subtitles) and the prompt; or ``error`` (missing or undecodable video) with no frames. The questions
    of one video share its frame list (decoded once): treat it as read-only.

    ``medium`` says what the frames are: ``"video"`` (frames of one clip, given to a model as a video where it
    takes videos), ``"image"`` (one picture) or ``"images"`` (several pictures, each its own image; frame
    indices and timestamps are then empty). ``subtitles_style`` names how the subtitle text was made
    (:data:`~vlmzip.eval.subtitles.SUBTITLE_STYLES`; ``None`` without subtitles)."""

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
    subtitles_style: str | None = None


def clip_samples(
    questions: Iterable[Question],
    read: Callable[[str], ClipRead],
    sampling: Sampling,
    template: Template,
    *,
    missing: Literal["record", "fail"] = "record",
    workers: int = 0,
) -> Iterator[Sample]:
    """A :class:`Sample` per question, calling ``read(video_file_stem)`` once per video for all its questions.

    Questions are grouped by video in first-appearance order. A read that returns an error yields samples with
    ``error`` set (``missing="record"``) or raises :class:`InputError` (``missing="fail"``). ``workers`` > 0 reads
    up to that many upcoming videos in background threads (results still come in order).
    """
    by_video: dict[str, list[Question]] = {}
    for q in questions:
        by_video.setdefault(q.video_file_stem, []).append(q)
    for stem, (clip, text, error) in _run_jobs(list(by_video), read, workers):
        if error is not None and missing == "fail":
            raise InputError(f"{error}; pass missing='record' to record it as an error and continue")
        for q in by_video[stem]:
            yield Sample(
                question=q,
                prompt=template.render(q, text),
                template=template.name,
                sampling=sampling.describe(),
                frames=clip.frames if clip else [],
                frame_indices=list(clip.indices) if clip else [],
                timestamps=list(clip.timestamps) if clip else [],
                subtitles=text,
                error=error,
            )


def _run_jobs(keys: list[str], job: Callable[[str], Any], workers: int) -> Iterator[tuple[str, Any]]:
    """``(key, job(key))`` for every key, in order; with ``workers`` > 0 the jobs run in that many threads, a
    bounded window ahead of the consumer (so decoded videos do not pile up in memory)."""
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
