"""Videos: timelines of tracks and their events, the clip sampler, the video question families and curriculum."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from vlmzip.eval.synthetic.images import caption
from vlmzip.eval.synthetic.questions import Question, _all_positions, _count_options, _mc, _pick
from vlmzip.eval.synthetic.renderer import render
from vlmzip.eval.synthetic.scenes import (
    _STEP,
    COLOUR_NAMES,
    DIRECTIONS,
    SHAPES,
    SUB,
    Obj,
    Scene,
    _slack,
    content_split,
    position_name,
)

MIN_VISIBLE = 4  # frames every non-brief track stays visible
BRIEF_MAX = 2  # frames a brief track stays visible


@dataclass(frozen=True)
class Move:
    """Move to the neighbouring cell in ``direction``: in transit for ``frames`` frames from ``start``,
    at rest in the new cell from ``start + frames`` on."""

    start: int
    frames: int
    direction: str


@dataclass(frozen=True)
class Recolour:
    frame: int
    colour: str


@dataclass(frozen=True)
class Track:
    """One object over time: visible on frames ``appear <= t < disappear``."""

    shape: str
    colour: str
    size: str
    x: int
    y: int
    appear: int
    disappear: int
    move: Move | None = None
    recolour: Recolour | None = None

    def state(self, t: int) -> Obj | None:
        if not self.appear <= t < self.disappear:
            return None
        colour = self.recolour.colour if self.recolour is not None and t >= self.recolour.frame else self.colour
        x, y = self.x, self.y
        if self.move is not None and t >= self.move.start:
            k = min(t - self.move.start + 1, self.move.frames + 1)
            dx, dy = _STEP[self.move.direction]
            x += dx * SUB * k // (self.move.frames + 1)
            y += dy * SUB * k // (self.move.frames + 1)
        return Obj(self.shape, colour, self.size, x, y)

    @property
    def end_x(self) -> int:
        return self.x + (_STEP[self.move.direction][0] * SUB if self.move else 0)

    @property
    def end_y(self) -> int:
        return self.y + (_STEP[self.move.direction][1] * SUB if self.move else 0)

    @property
    def brief(self) -> bool:
        return self.disappear - self.appear <= BRIEF_MAX


@dataclass(frozen=True)
class Timeline:
    n_frames: int
    tracks: tuple[Track, ...]
    grid: int = 3

    def track(self, shape: str) -> Track:
        return next(t for t in self.tracks if t.shape == shape)


@dataclass(frozen=True)
class Event:
    frame: int
    shape: str
    kind: str  # appear | disappear | move | recolour
    detail: str = ""  # direction or new colour

    @property
    def phrase(self) -> str:
        tail = {"appear": "appeared", "disappear": "disappeared", "move": "moved", "recolour": "turned"}[self.kind]
        return f"the {self.shape} {tail}" + (f" {self.detail}" if self.detail else "")


def timeline_frames(tl: Timeline) -> tuple[Scene, ...]:
    """The scene of every frame (objects in track order)."""
    return tuple(
        Scene(tuple(o for o in (tr.state(t) for tr in tl.tracks) if o is not None), tl.grid) for t in range(tl.n_frames)
    )


def timeline_events(tl: Timeline) -> list[Event]:
    """All events, sorted by frame then track order. Being visible from frame 0 is not an event."""
    events = []
    for tr in tl.tracks:
        if tr.appear > 0:
            events.append(Event(tr.appear, tr.shape, "appear"))
        if tr.move is not None:
            events.append(Event(tr.move.start, tr.shape, "move", tr.move.direction))
        if tr.recolour is not None:
            events.append(Event(tr.recolour.frame, tr.shape, "recolour", tr.recolour.colour))
        if tr.disappear < tl.n_frames:
            events.append(Event(tr.disappear, tr.shape, "disappear"))
    order = {tr.shape: i for i, tr in enumerate(tl.tracks)}
    return sorted(events, key=lambda e: (e.frame, order[e.shape]))


@dataclass(frozen=True)
class VideoDifficulty:
    """Knobs of the clip sampler; the ``*_prob`` are per-track event probabilities. ``max_objects`` does
    not count the brief object (present in a fraction ``brief_prob`` of clips)."""

    min_frames: int = 8
    max_frames: int = 32
    min_objects: int = 2
    max_objects: int = 4
    families: tuple[str, ...] = ()  # () = all of VIDEO_FAMILIES
    grid: int = 3
    small_prob: float = 0.3
    jitter: float = 1.0
    brief_prob: float = 0.5
    appear_prob: float = 0.5
    disappear_prob: float = 0.35
    move_prob: float = 0.45
    recolour_prob: float = 0.35

    def __post_init__(self) -> None:
        if not self.families:
            object.__setattr__(self, "families", tuple(VIDEO_FAMILIES))
        if not 2 * MIN_VISIBLE <= self.min_frames <= self.max_frames:
            raise ValueError(f"need {2 * MIN_VISIBLE} <= min_frames <= max_frames, got {self}")
        extra = 1 if self.brief_prob > 0 else 0
        if not 1 <= self.min_objects <= self.max_objects or self.max_objects + extra > min(len(SHAPES), self.grid**2):
            raise ValueError(f"bad object counts {self.min_objects}..{self.max_objects} (+{extra} brief)")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")
        unknown = set(self.families) - set(VIDEO_FAMILIES)
        if unknown:
            raise ValueError(f"unknown video question families: {sorted(unknown)}")


def sample_timeline(rng: np.random.Generator, difficulty: VideoDifficulty | None = None) -> Timeline:
    """A random clip: tracks with unique shapes in distinct cells (a mover also reserves its target cell,
    so objects never overlap), each with optional appear / disappear / move / recolour events."""
    d = difficulty or VideoDifficulty()
    n_frames = int(rng.integers(d.min_frames, d.max_frames + 1))
    n = int(rng.integers(d.min_objects, d.max_objects + 1))
    brief = bool(rng.random() < d.brief_prob)
    shapes = [SHAPES[int(i)] for i in rng.permutation(len(SHAPES))[: n + brief]]
    free = [int(c) for c in rng.permutation(d.grid * d.grid)]
    tracks = []
    for i, shape in enumerate(shapes):
        cell = free.pop(0)
        row, col = divmod(cell, d.grid)
        size = "small" if rng.random() < d.small_prob else "large"
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        slack = _slack(size, d.jitter)
        dx, dy = (int(o) for o in rng.integers(-slack, slack + 1, size=2))
        x, y = col * SUB + SUB // 2 + dx, row * SUB + SUB // 2 + dy
        if i == n:  # the brief object: visible 1-2 frames, strictly inside the clip
            length = int(rng.integers(1, BRIEF_MAX + 1))
            appear = int(rng.integers(1, n_frames - length))
            tracks.append(Track(shape, colour, size, x, y, appear, appear + length))
            continue
        appear = int(rng.integers(1, n_frames - MIN_VISIBLE + 1)) if rng.random() < d.appear_prob else 0
        disappear = n_frames
        if rng.random() < d.disappear_prob and appear + MIN_VISIBLE < n_frames:
            disappear = int(rng.integers(appear + MIN_VISIBLE, n_frames))
        move = None
        if rng.random() < d.move_prob:
            dirs = [
                k
                for k, (sx, sy) in _STEP.items()
                if 0 <= row + sy < d.grid and 0 <= col + sx < d.grid and (row + sy) * d.grid + col + sx in free
            ]
            transit = int(rng.integers(0, 3))
            lo, hi = appear + 1, disappear - transit - 1  # visible before, at rest after
            if dirs and lo <= hi:
                direction = _pick(dirs, rng)
                sx, sy = _STEP[direction]
                free.remove((row + sy) * d.grid + col + sx)
                move = Move(int(rng.integers(lo, hi + 1)), transit, direction)
        recolour = None
        if rng.random() < d.recolour_prob:
            new = _pick([c for c in COLOUR_NAMES if c != colour], rng)
            recolour = Recolour(int(rng.integers(appear + 1, disappear)), new)
        tracks.append(Track(shape, colour, size, x, y, appear, disappear, move, recolour))
    return Timeline(n_frames, tuple(tracks), d.grid)


def _unseen(tl: Timeline) -> list[str]:
    seen = {tr.shape for tr in tl.tracks}
    return [s for s in SHAPES if s not in seen]


def _colours_of(tr: Track) -> list[str]:
    return [tr.colour] + ([tr.recolour.colour] if tr.recolour else [])


def vq_appeared_last(tl: Timeline, rng: np.random.Generator) -> Question | None:
    late = [tr for tr in tl.tracks if tr.appear > 0]
    if not late:
        return None
    last = max(tr.appear for tr in late)
    winners = [tr for tr in late if tr.appear == last]
    if len(winners) != 1:
        return None
    ans = winners[0].shape
    pools = ([tr.shape for tr in tl.tracks], _unseen(tl))
    return _mc("appeared_last", "Which object appeared last?", ans, pools, rng)


def vq_event_order(tl: Timeline, rng: np.random.Generator) -> Question | None:
    by_frame: dict[int, list[Event]] = {}
    for e in timeline_events(tl):
        by_frame.setdefault(e.frame, []).append(e)
    if len(by_frame) < 2:
        return None
    frames = sorted(by_frame)
    chosen_frames = sorted(frames[int(i)] for i in rng.permutation(len(frames))[:4])
    chosen = [_pick(by_frame[f], rng) for f in chosen_frames]
    false = [f"the {s} appeared" for s in _unseen(tl)]
    for tr in tl.tracks:
        if tr.move is None:
            false += [f"the {tr.shape} moved {k}" for k in DIRECTIONS]
        if tr.recolour is None:
            false += [f"the {tr.shape} turned {c}" for c in COLOUR_NAMES if c != tr.colour]
        if tr.disappear == tl.n_frames:
            false.append(f"the {tr.shape} disappeared")
    pools = ([e.phrase for e in chosen[1:]], false)
    return _mc("event_order", "Which of these happened first?", chosen[0].phrase, pools, rng)


def vq_move_direction(tl: Timeline, rng: np.random.Generator) -> Question | None:
    movers = [tr for tr in tl.tracks if tr.move is not None]
    if not movers:
        return None
    tr = _pick(movers, rng)
    text = f"Which direction did the {tr.shape} move?"
    return _mc("move_direction", text, tr.move.direction, ([], DIRECTIONS), rng, [("shape", tr.shape)])


def vq_count_seen(tl: Timeline, rng: np.random.Generator) -> Question | None:
    n = len(tl.tracks)
    text = "How many different objects were shown in the video?"
    return _mc("count_seen", text, str(n), ([], _count_options(n, rng)), rng)


def vq_count_end(tl: Timeline, rng: np.random.Generator) -> Question | None:
    n = sum(tr.disappear == tl.n_frames for tr in tl.tracks)
    text = "How many objects were visible at the end of the video?"
    return _mc("count_end", text, str(n), ([], _count_options(n, rng)), rng)


def vq_recolour(tl: Timeline, rng: np.random.Generator) -> Question | None:
    changed = [tr for tr in tl.tracks if tr.recolour is not None]
    if not changed:
        return None
    tr = _pick(changed, rng)
    pools = ([tr.colour], [c for t in tl.tracks for c in _colours_of(t)], COLOUR_NAMES)
    text = f"What colour did the {tr.shape} turn?"
    return _mc("recolour", text, tr.recolour.colour, pools, rng, [("shape", tr.shape)])


def vq_colour_before(tl: Timeline, rng: np.random.Generator) -> Question | None:
    changed = [tr for tr in tl.tracks if tr.recolour is not None]
    if not changed:
        return None
    tr = _pick(changed, rng)
    pools = ([tr.recolour.colour], [c for t in tl.tracks for c in _colours_of(t)], COLOUR_NAMES)
    text = f"What colour was the {tr.shape} before it changed colour?"
    return _mc("colour_before", text, tr.colour, pools, rng, [("shape", tr.shape)])


def vq_disappeared(tl: Timeline, rng: np.random.Generator) -> Question | None:
    gone = [tr for tr in tl.tracks if tr.disappear < tl.n_frames]
    if not gone:
        return None
    ans = _pick(gone, rng).shape
    pools = ([tr.shape for tr in tl.tracks if tr.disappear == tl.n_frames], _unseen(tl))
    return _mc("disappeared", "Which of these objects disappeared?", ans, pools, rng)


def vq_brief_shape(tl: Timeline, rng: np.random.Generator) -> Question | None:
    brief = [tr for tr in tl.tracks if tr.brief]
    if len(brief) != 1:
        return None
    pools = ([tr.shape for tr in tl.tracks], _unseen(tl))
    return _mc("brief_shape", "Which object was visible for only a moment?", brief[0].shape, pools, rng)


def vq_brief_colour(tl: Timeline, rng: np.random.Generator) -> Question | None:
    brief = [tr for tr in tl.tracks if tr.brief]
    if len(brief) != 1:
        return None
    pools = ([c for tr in tl.tracks for c in _colours_of(tr)], COLOUR_NAMES)
    text = "What colour was the object that was visible for only a moment?"
    return _mc("brief_colour", text, brief[0].colour, pools, rng)


def vq_position_at_end(tl: Timeline, rng: np.random.Generator) -> Question | None:
    staying = [tr for tr in tl.tracks if tr.disappear == tl.n_frames]
    if not staying:
        return None
    tr = _pick(staying, rng)
    g = tl.grid
    ans = position_name(tr.end_y // SUB, tr.end_x // SUB, g)
    near = [position_name(tr.y // SUB, tr.x // SUB, g)]
    near += [position_name(t.end_y // SUB, t.end_x // SUB, g) for t in tl.tracks]
    text = f"Where was the {tr.shape} at the end of the video?"
    return _mc("position_at_end", text, ans, (near, _all_positions(g)), rng, [("shape", tr.shape)])


VideoFamily = Callable[[Timeline, np.random.Generator], "Question | None"]
VIDEO_FAMILIES: dict[str, VideoFamily] = {
    "appeared_last": vq_appeared_last,
    "event_order": vq_event_order,
    "move_direction": vq_move_direction,
    "count_seen": vq_count_seen,
    "count_end": vq_count_end,
    "recolour": vq_recolour,
    "colour_before": vq_colour_before,
    "disappeared": vq_disappeared,
    "brief_shape": vq_brief_shape,
    "brief_colour": vq_brief_colour,
    "position_at_end": vq_position_at_end,
}
BRIEF_FAMILIES: tuple[str, ...] = ("brief_shape", "brief_colour")

VIDEO_CURRICULUM: tuple[VideoDifficulty, ...] = (
    VideoDifficulty(
        8,
        16,
        1,
        2,
        ("count_seen", "count_end", "move_direction", "recolour", "position_at_end", "brief_shape", "brief_colour"),
        brief_prob=0.3,
    ),
    VideoDifficulty(8, 24, 2, 3),
    VideoDifficulty(),
)


def sample_video_item(
    rng: np.random.Generator,
    difficulty: VideoDifficulty | None = None,
    split: str | None = "train",
    n_questions: int = 3,
    max_tries: int = 10_000,
) -> tuple[Timeline, tuple[Question, ...]]:
    """A clip of ``split`` (``None``: any) and ``n_questions`` questions of distinct families; when the
    clip has a brief object and a brief family is allowed, one question is about the brief object."""
    d = difficulty or VideoDifficulty()
    for _ in range(max_tries):
        tl = sample_timeline(rng, d)
        if split is not None and content_split(tl) != split:
            continue
        fams = [d.families[int(i)] for i in rng.permutation(len(d.families))]
        if any(tr.brief for tr in tl.tracks):
            fams.sort(key=lambda f: f not in BRIEF_FAMILIES)  # stable: one brief family first
        qs: list[Question] = []
        for fam in fams:
            if fam in BRIEF_FAMILIES and any(q.family in BRIEF_FAMILIES for q in qs):
                continue
            q = VIDEO_FAMILIES[fam](tl, rng)
            if q is not None:
                qs.append(q)
            if len(qs) == n_questions:
                return tl, tuple(qs)
    raise RuntimeError(f"no clip with {n_questions} questions in {max_tries} tries under {d}")


def video_caption(tl: Timeline) -> tuple[str, str]:
    """(prompt, description) of a clip: the first frame's objects, then every event in order."""
    _, start = caption(timeline_frames(tl)[0])
    events = "".join(f" Then {e.phrase}." for e in timeline_events(tl))
    return "Describe the video.", start + events


def render_timeline(tl: Timeline, size: int = 64, device: torch.device | str | None = None) -> torch.Tensor:
    """All frames of a clip: ``uint8 [n_frames, 3, size, size]``."""
    return render(timeline_frames(tl), size, device)
