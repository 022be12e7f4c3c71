"""Video files, frame sampling and decoding with PyAV: what every bench that shows a model a video uses.

:class:`Sampling` says which frames to read (a count with lmms-eval's or VLMEvalKit's sampler, or a rate);
:func:`read_clip` opens a video once, counts its frames, samples and decodes them into a :class:`Clip`. A
:class:`FileRef` is a file on disk or a member of a zip archive, read without extracting it.

Frame indices count decoded frames in presentation order from 0; timestamps are seconds from the stream start.
"""

from __future__ import annotations

import contextlib
import numbers
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from vlmzip.errors import InputError

__all__ = ["SAMPLERS", "Clip", "FileRef", "Sampling", "decode", "read_clip", "require_av", "sample_frames"]

SAMPLERS = ("linspace", "centered")


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


def require_av() -> Any:
    """The ``av`` module; :class:`InputError` naming the extra to install when PyAV is missing. Samplers call it
    before the first video, so a missing PyAV is reported as a setup problem, not as an error per video."""
    try:
        import av
    except ImportError as error:
        raise InputError("decoding videos needs PyAV: pip install 'vlmzip[video]' (or pip install av)") from error
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
    av = require_av()
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
