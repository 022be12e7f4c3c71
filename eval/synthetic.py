"""Deterministic synthetic visual question answering data: images and short videos of coloured shapes.

Everything is a pure function of a seed (no downloads, no global random state): the same seed gives
the same scenes, the same questions and the same bytes on disk. Two ways to use it:

* **In memory, for training** — ``image_batch(n, rng, difficulty)`` / ``video_batch(...)`` sample scenes
  and questions on the host (plain Python) and render them with batched integer torch ops on any
  device to ``uint8`` tensors ``[B, 3, H, W]``. ``IMAGE_CURRICULUM`` / ``VIDEO_CURRICULUM`` are
  difficulty levels (objects per scene, question families) for a curriculum.
* **On disk, for evaluation** — ``write_image_set`` (JSONL + PNG) and ``write_video_set`` (the Video-MME
  Hugging Face layout), or the CLI ``python -m vlmzip.eval.synthetic --out DIR --images N --videos N
  --seed S``, which writes all three splits.

Scene model
-----------
A scene is a ``grid x grid`` board (3x3 by default; cells named "top left" ... "bottom right") with at
most one object per cell. An object has a shape (``SHAPES``), a colour (``COLOURS``, 8 well separated
named colours on a dark grey background), a size (small: 10/24 of a cell across, large: 18/24) and an
integer position in sub-cell units (``SUB`` = 24 per cell), jittered inside its cell. Positions are
integers and the renderer tests pixel centres against each shape with exact integer inequalities: no
floating point is involved, so the pixels cannot depend on the device (CPU-tested; the GPU path runs the
same integer ops).

A video is a ``Timeline``: ``n_frames`` (8-32) and tracks; each track has a unique shape (its identity
in questions), appears at some frame (0 = from the start), may disappear, may move once to the
neighbouring cell (taking 1-3 frames), may change colour once. Some clips hold a *brief* object that
is visible for only 1-2 frames, and one of the clip's questions is then about it: dropping frames
loses that answer. ``timeline_frames`` gives the per-frame scenes, ``timeline_events`` the events.

Questions
---------
Every question family is a function ``(scene or timeline, rng) -> Question | None`` (``None``: this
scene does not support the family). A ``Question`` has four options formatted as Video-MME's
(``"A. red"``), the answer letter, ``answer_word`` (the option's text, for word-answer training) and
``params`` naming what it asks about. Distractors come from the scene where possible (other objects'
colours, shapes, positions), then from the full vocabulary; options are shuffled, so letters are
uniform. See ``IMAGE_FAMILIES`` and ``VIDEO_FAMILIES``.

Splits
------
Train, validation and test are disjoint *by content*: a scene (or timeline) belongs to the split its
content hash names (``content_split``: 80 / 10 / 10 buckets), and a sampler for one split rejects
content of the others. No scene — hence no (scene, question) pair — is shared between splits, whatever
the seeds or sizes. Each split also draws from its own random stream (``split_rng``).

On disk
-------
``write_image_set(root, n, split, seed)``: ``root/{split}.jsonl`` (one question per image; id, image
path, question, options, answer, answer_word, family, params and the scene itself) and
``root/images/{split}/{id}.png``.

``write_video_set(root, n_videos, split, seed)`` writes ONE split per root, in the Video-MME Hugging
Face layout whose file name is fixed: ``root/videomme/test-00000-of-00001.parquet`` (exactly
Video-MME's columns ``VIDEOMME_COLUMNS``, 3 questions per video), ``root/data/{videoID}.mp4`` (H.264
lossless, ``yuv444p``, qp 0: decoded colours are within 1 level of the rendered ones) and
``root/subtitle/{videoID}.srt`` (one cue per event frame, cue text wrapped in the same ``<font>`` tag as
Video-MME's; none for clips without events). Column values: ``video_id`` "001", ``videoID``
"syntr00000" / "synva00000" / "synte00000" (unique across splits), ``question_id`` "001-1",
``duration`` short (< 16 frames) / medium (16-23) / long (24-32), ``domain`` "Synthetic shapes",
``sub_category`` the clip's event kinds ("appear, move"; "static" if none), ``task_type`` the question
family, ``url`` a ``synthetic://`` record of split, seed and index. The CLI writes
``OUT/image/...`` and ``OUT/video/{train,validation,test}/...``.

Subtitles narrate the events, so they give answers away: evaluate visual-token methods without them.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "BACKGROUND",
    "BRIEF_FAMILIES",
    "COLOURS",
    "COLOUR_NAMES",
    "DIRECTIONS",
    "IMAGE_CURRICULUM",
    "IMAGE_FAMILIES",
    "LETTERS",
    "PLURALS",
    "RADIUS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "SUB",
    "VIDEOMME_COLUMNS",
    "VIDEOMME_PARQUET",
    "VIDEO_CURRICULUM",
    "VIDEO_FAMILIES",
    "Event",
    "ImageBatch",
    "ImageDifficulty",
    "ImageRecord",
    "Move",
    "Obj",
    "ObjectArrays",
    "Question",
    "Recolour",
    "Scene",
    "Timeline",
    "Track",
    "VideoBatch",
    "VideoDifficulty",
    "caption",
    "classify_colours",
    "content_split",
    "encode_mp4",
    "image_batch",
    "load_image_set",
    "main",
    "mc_prompt",
    "option_lookup",
    "position_name",
    "render",
    "render_arrays",
    "render_timeline",
    "sample_image_item",
    "sample_scene",
    "sample_timeline",
    "sample_video_item",
    "scene_arrays",
    "shape_mask",
    "split_counts",
    "split_rng",
    "srt_text",
    "timeline_events",
    "timeline_frames",
    "video_batch",
    "video_caption",
    "write_all",
    "write_image_set",
    "write_video_set",
]

# ----------------------------------------------------------------------------------------------------
# Vocabulary and geometry
# ----------------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond")
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "cross": "crosses",
    "ring": "rings",
    "diamond": "diamonds",
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "cyan": (40, 210, 220),
    "white": (240, 240, 240),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
BACKGROUND: tuple[int, int, int] = (32, 32, 32)
SIZES: tuple[str, ...] = ("small", "large")
SUB = 24  # position units per grid cell
RADIUS: dict[str, int] = {"small": 5, "large": 9}  # in SUB units
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
_STEP: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy)
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
LETTERS = "ABCD"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
_SPLIT_CODE = {"train": "tr", "validation": "va", "test": "te"}
_KIND_CODE = {"image": 1, "video": 2}
_POSITIONS3 = (
    ("top left", "top middle", "top right"),
    ("middle left", "center", "middle right"),
    ("bottom left", "bottom middle", "bottom right"),
)
VIDEOMME_COLUMNS: tuple[str, ...] = (
    "video_id",
    "duration",
    "domain",
    "sub_category",
    "url",
    "videoID",
    "question_id",
    "task_type",
    "question",
    "options",
    "answer",
)
VIDEOMME_PARQUET = "videomme/test-00000-of-00001.parquet"
DOMAIN = "Synthetic shapes"
MIN_VISIBLE = 4  # frames every non-brief track stays visible
BRIEF_MAX = 2  # frames a brief track stays visible


def position_name(row: int, col: int, grid: int = 3) -> str:
    """Name of a grid cell: "top left" ... "bottom right" on a 3x3 grid, else "row 2, column 4"."""
    if grid == 3:
        return _POSITIONS3[row][col]
    return f"row {row + 1}, column {col + 1}"


# ----------------------------------------------------------------------------------------------------
# Scene model
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """One object; ``x``, ``y`` are its centre in ``SUB`` units (cell ``(y // SUB, x // SUB)``)."""

    shape: str
    colour: str
    size: str
    x: int
    y: int

    @property
    def cell(self) -> tuple[int, int]:
        """(row, column) of the cell holding the centre."""
        return self.y // SUB, self.x // SUB

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Objects on a ``grid x grid`` board, at most one per cell, sorted by cell (row-major)."""

    objects: tuple[Obj, ...]
    grid: int = 3

    def __post_init__(self) -> None:
        span = self.grid * SUB
        for o in self.objects:
            r = RADIUS[o.size]
            if not (r <= o.x <= span - r and r <= o.y <= span - r):
                raise ValueError(f"{o} is not inside the {self.grid}x{self.grid} board")

    def position(self, obj: Obj) -> str:
        return position_name(*obj.cell, self.grid)

    def to_json(self) -> dict:
        return {"grid": self.grid, "objects": [_obj_json(o) for o in self.objects]}

    @staticmethod
    def from_json(data: dict) -> Scene:
        objs = tuple(Obj(o["shape"], o["colour"], o["size"], int(o["x"]), int(o["y"])) for o in data["objects"])
        return Scene(objs, int(data["grid"]))


def _obj_json(o: Obj) -> dict:
    row, col = o.cell
    return {"shape": o.shape, "colour": o.colour, "size": o.size, "x": o.x, "y": o.y, "row": row, "col": col}


@dataclass(frozen=True)
class Question:
    """A four-option multiple-choice question; ``options`` are Video-MME style ("A. red")."""

    family: str
    text: str
    options: tuple[str, ...]
    answer: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def choices(self) -> tuple[str, ...]:
        """The options without their letters."""
        return tuple(o[3:] for o in self.options)

    @property
    def answer_word(self) -> str:
        return self.choices[LETTERS.index(self.answer)]

    def param(self, key: str) -> str:
        return dict(self.params)[key]

    def to_json(self) -> dict:
        return {
            "question": self.text,
            "options": list(self.options),
            "answer": self.answer,
            "answer_word": self.answer_word,
            "family": self.family,
            "params": dict(self.params),
        }


def option_lookup(question: Question) -> Question:
    """``question`` asked by its own answer, "Which option is <answer>?", with the same options and letter: the
    last step of every multiple-choice answer (find the option that says what the model concluded) as a task of
    its own, which needs no image."""
    return replace(question, text=f"Which option is {question.answer_word}?")


def mc_prompt(question: Question, medium: str = "image") -> str:
    """The official Video-MME multiple-choice prompt (without subtitles) for ``medium`` "image" or "video"."""
    return (
        f"Select the best answer to the following multiple-choice question based on the {medium}. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        f"{question.text}\n" + "\n".join(question.options) + "\nThe best answer is:"
    )


def _mc(
    family: str,
    text: str,
    answer: str,
    pools: Sequence[Sequence[str]],
    rng: np.random.Generator,
    params: Sequence[tuple[str, str]] = (),
) -> Question | None:
    """Answer plus three distractors taken from ``pools`` in order (each pool shuffled), then shuffled."""
    picked: list[str] = []
    for pool in pools:
        cands = [c for c in dict.fromkeys(pool) if c != answer and c not in picked]
        for i in rng.permutation(len(cands)):
            if len(picked) == 3:
                break
            picked.append(cands[int(i)])
    if len(picked) < 3:
        return None
    words = [answer, *picked]
    words = [words[int(i)] for i in rng.permutation(4)]
    options = tuple(f"{letter}. {w}" for letter, w in zip(LETTERS, words))
    return Question(family, text, options, LETTERS[words.index(answer)], tuple(params))


def _count_options(answer: int, rng: np.random.Generator) -> list[str]:
    start = max(0, answer - int(rng.integers(0, 4)))
    return [str(start + i) for i in range(4)]


# ----------------------------------------------------------------------------------------------------
# Image question families
# ----------------------------------------------------------------------------------------------------


def _pick(items: Sequence, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def _unique_by(objs: Sequence[Obj], key: Callable[[Obj], str]) -> list[Obj]:
    counts = Counter(key(o) for o in objs)
    return [o for o in objs if counts[key(o)] == 1]


def _all_positions(grid: int) -> list[str]:
    return [position_name(r, c, grid) for r in range(grid) for c in range(grid)]


def q_colour_of_shape(scene: Scene, rng: np.random.Generator) -> Question | None:
    cands = _unique_by(scene.objects, lambda o: o.shape)
    if not cands:
        return None
    o = _pick(cands, rng)
    pools = ([p.colour for p in scene.objects], COLOUR_NAMES)
    return _mc("colour_of_shape", f"What colour is the {o.shape}?", o.colour, pools, rng, [("shape", o.shape)])


def q_shape_of_colour(scene: Scene, rng: np.random.Generator) -> Question | None:
    cands = _unique_by(scene.objects, lambda o: o.colour)
    if not cands:
        return None
    o = _pick(cands, rng)
    pools = ([p.shape for p in scene.objects], SHAPES)
    return _mc("shape_of_colour", f"What shape is the {o.colour} object?", o.shape, pools, rng, [("colour", o.colour)])


def q_colour_at_position(scene: Scene, rng: np.random.Generator) -> Question | None:
    o = _pick(scene.objects, rng)
    text = f"What colour is the object at the {scene.position(o)}?"
    params = [("row", str(o.cell[0])), ("col", str(o.cell[1]))]
    return _mc("colour_at_position", text, o.colour, ([p.colour for p in scene.objects], COLOUR_NAMES), rng, params)


def q_shape_at_position(scene: Scene, rng: np.random.Generator) -> Question | None:
    o = _pick(scene.objects, rng)
    text = f"What shape is the object at the {scene.position(o)}?"
    params = [("row", str(o.cell[0])), ("col", str(o.cell[1]))]
    return _mc("shape_at_position", text, o.shape, ([p.shape for p in scene.objects], SHAPES), rng, params)


def q_position_of(scene: Scene, rng: np.random.Generator) -> Question | None:
    cands = _unique_by(scene.objects, lambda o: o.name)
    if not cands:
        return None
    o = _pick(cands, rng)
    pools = ([scene.position(p) for p in scene.objects], _all_positions(scene.grid))
    return _mc("position_of", f"Where is the {o.name}?", scene.position(o), pools, rng, [("object", o.name)])


def q_count_shape(scene: Scene, rng: np.random.Generator) -> Question | None:
    shape = _pick(scene.objects, rng).shape if rng.random() < 0.75 else _pick(SHAPES, rng)
    n = sum(o.shape == shape for o in scene.objects)
    text = f"How many {PLURALS[shape]} are there?"
    return _mc("count_shape", text, str(n), ([], _count_options(n, rng)), rng, [("shape", shape)])


def q_count_colour(scene: Scene, rng: np.random.Generator) -> Question | None:
    colour = _pick(scene.objects, rng).colour if rng.random() < 0.75 else _pick(COLOUR_NAMES, rng)
    n = sum(o.colour == colour for o in scene.objects)
    text = f"How many {colour} objects are there?"
    return _mc("count_colour", text, str(n), ([], _count_options(n, rng)), rng, [("colour", colour)])


def q_colour_of_small(scene: Scene, rng: np.random.Generator) -> Question | None:
    small = [o for o in scene.objects if o.size == "small"]
    if len(small) != 1:
        return None
    pools = ([p.colour for p in scene.objects], COLOUR_NAMES)
    return _mc("colour_of_small", "What colour is the small object?", small[0].colour, pools, rng)


def q_larger(scene: Scene, rng: np.random.Generator) -> Question | None:
    named = _unique_by(scene.objects, lambda o: o.name)
    large = [o for o in named if o.size == "large"]
    small = [o for o in named if o.size == "small"]
    if not large or not small:
        return None
    a, b = _pick(large, rng), _pick(small, rng)
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    present = {o.name for o in scene.objects}
    absent = [f"{c} {s}" for c in COLOUR_NAMES for s in SHAPES if f"{c} {s}" not in present]
    pools = ([b.name], [o.name for o in named if o not in (a, b)], absent)
    text = f"Which is larger, the {first.name} or the {second.name}?"
    return _mc("larger", text, a.name, pools, rng, [("a", first.name), ("b", second.name)])


def q_relation(scene: Scene, rng: np.random.Generator) -> Question | None:
    named = _unique_by(scene.objects, lambda o: o.name)
    pairs = [(a, b) for a in named for b in named if a is not b and (a.cell[0] == b.cell[0] or a.cell[1] == b.cell[1])]
    if not pairs:
        return None
    a, b = _pick(pairs, rng)
    (ra, ca), (rb, cb) = a.cell, b.cell
    answer = ("left" if ca < cb else "right") if ra == rb else ("above" if ra < rb else "below")
    text = f"Where is the {a.name} relative to the {b.name}?"
    return _mc("relation", text, answer, ([], RELATIONS), rng, [("a", a.name), ("b", b.name)])


def q_exists(scene: Scene, rng: np.random.Generator) -> Question | None:
    o = _pick(scene.objects, rng)
    present = {p.name for p in scene.objects}
    colours = list(dict.fromkeys(p.colour for p in scene.objects))
    shapes = list(dict.fromkeys(p.shape for p in scene.objects))
    near = [f"{c} {s}" for c in colours for s in shapes if f"{c} {s}" not in present]
    far = [f"{c} {s}" for c in COLOUR_NAMES for s in SHAPES if f"{c} {s}" not in present]
    return _mc("exists", "Which of these objects is in the image?", o.name, (near, far), rng)


ImageFamily = Callable[[Scene, np.random.Generator], "Question | None"]
IMAGE_FAMILIES: dict[str, ImageFamily] = {
    "colour_of_shape": q_colour_of_shape,
    "shape_of_colour": q_shape_of_colour,
    "colour_at_position": q_colour_at_position,
    "shape_at_position": q_shape_at_position,
    "position_of": q_position_of,
    "count_shape": q_count_shape,
    "count_colour": q_count_colour,
    "colour_of_small": q_colour_of_small,
    "larger": q_larger,
    "relation": q_relation,
    "exists": q_exists,
}
_IMAGE_MIN_OBJECTS = {"larger": 2, "relation": 2}

# ----------------------------------------------------------------------------------------------------
# Difficulty, seeds, splits
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageDifficulty:
    """Knobs of the image sampler. ``jitter``: fraction of the in-cell slack used by random offsets."""

    min_objects: int = 1
    max_objects: int = 6
    families: tuple[str, ...] = tuple(IMAGE_FAMILIES)
    grid: int = 3
    small_prob: float = 0.35
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= grid^2, got {self}")
        unknown = set(self.families) - set(IMAGE_FAMILIES)
        if unknown or not self.families:
            raise ValueError(f"unknown or no image question families: {sorted(unknown)}")
        for fam in self.families:
            if self.max_objects < _IMAGE_MIN_OBJECTS.get(fam, 1):
                raise ValueError(f"family {fam!r} needs max_objects >= {_IMAGE_MIN_OBJECTS[fam]}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")
        if "colour_of_small" in self.families and self.small_prob <= 0:
            raise ValueError("family 'colour_of_small' needs small_prob > 0")


_L0 = ("colour_of_shape", "shape_of_colour")
_L1 = (*_L0, "colour_at_position", "shape_at_position", "exists", "colour_of_small")
_L2 = (*_L1, "position_of", "count_shape", "count_colour", "larger", "relation")

IMAGE_CURRICULUM: tuple[ImageDifficulty, ...] = (
    ImageDifficulty(1, 1, _L0),
    ImageDifficulty(1, 2, _L1),
    ImageDifficulty(2, 3, _L2),
    ImageDifficulty(2, 4),
    ImageDifficulty(3, 6),
)
"""Curriculum levels: 1 object / colour-shape questions -> 3-6 objects / all families. Mix levels rather
than switching abruptly, and train word answers and option letters together from the start."""


def split_rng(seed: int, kind: str, split: str) -> np.random.Generator:
    """The random stream of one (seed, "image" | "video", split); streams never share state."""
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(_KIND_CODE[kind], SPLITS.index(split))))
    )


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def content_split(content: Scene | Timeline) -> str:
    """The split that owns this content: hash buckets 0-9 test, 10-19 validation, 20-99 train."""
    digest = hashlib.blake2b(repr(content).encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % 100
    return "test" if bucket < 10 else "validation" if bucket < 20 else "train"


def _slack(size: str, jitter: float) -> int:
    """Largest offset from the cell centre that keeps an object a sub-unit inside its cell."""
    return int((SUB // 2 - RADIUS[size] - 1) * jitter)


def sample_scene(rng: np.random.Generator, difficulty: ImageDifficulty = ImageDifficulty()) -> Scene:
    """A random scene: object count, cells, then per object size, shape, colour and offset."""
    d = difficulty
    n = int(rng.integers(d.min_objects, d.max_objects + 1))
    cells = sorted(rng.permutation(d.grid * d.grid)[:n].tolist())
    objs = []
    for cell, (us, ush, uc, ux, uy) in zip(cells, rng.random((n, 5)).tolist()):
        row, col = divmod(cell, d.grid)
        size = "small" if us < d.small_prob else "large"
        slack = _slack(size, d.jitter)
        dx, dy = int(ux * (2 * slack + 1)) - slack, int(uy * (2 * slack + 1)) - slack
        x, y = col * SUB + SUB // 2 + dx, row * SUB + SUB // 2 + dy
        objs.append(Obj(SHAPES[int(ush * len(SHAPES))], COLOUR_NAMES[int(uc * len(COLOUR_NAMES))], size, x, y))
    return Scene(tuple(objs), d.grid)


def sample_image_item(
    rng: np.random.Generator,
    difficulty: ImageDifficulty = ImageDifficulty(),
    split: str | None = "train",
    max_tries: int = 10_000,
) -> tuple[Scene, Question]:
    """A question family (uniform over ``difficulty.families``), then scenes until one belongs to ``split``
    (``None``: any) and supports the family."""
    family = _pick(difficulty.families, rng)
    for _ in range(max_tries):
        scene = sample_scene(rng, difficulty)
        if split is not None and content_split(scene) != split:
            continue
        q = IMAGE_FAMILIES[family](scene, rng)
        if q is not None:
            return scene, q
    raise RuntimeError(f"no scene supporting {family!r} in {max_tries} tries under {difficulty}")


# ----------------------------------------------------------------------------------------------------
# Renderer (batched, integer arithmetic, any device)
# ----------------------------------------------------------------------------------------------------


def _circle(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    return u * u + v * v <= r * r


def _ring(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    d2 = u * u + v * v
    return (d2 <= r * r) & (d2 >= -(-r * r // 4))  # inner radius r / 2


def _square(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    return (5 * u.abs() <= 4 * r) & (5 * v.abs() <= 4 * r)


def _triangle(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    return (5 * v <= 4 * r) & (2 * u.abs() <= v + r)  # apex up at -r, base at 0.8 r


def _cross(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    return ((10 * au <= 3 * r) & (av <= r)) | ((10 * av <= 3 * r) & (au <= r))


def _diamond(u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    return u.abs() + v.abs() <= r


_INSIDE: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "diamond": _diamond,
}


def shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor, r: int) -> torch.Tensor:
    """Which points ``(u, v)`` (integer offsets from the centre, ``v`` downwards, broadcast together) lie
    inside ``shape`` of radius ``r``: exact integer inequalities, so every device agrees."""
    return _INSIDE[shape](u, v, r)


@dataclass(frozen=True)
class ObjectArrays:
    """The objects of a batch of scenes as flat ``int64`` tensors, sorted by (shape, size); ``groups``
    holds ``(shape, size, start, count)`` of each run (host-side, so rendering needs no device sync)."""

    image: torch.Tensor  # index of the object's scene
    colour: torch.Tensor  # index into COLOURS
    x: torch.Tensor
    y: torch.Tensor
    span: torch.Tensor  # grid * SUB of the object's scene
    groups: tuple[tuple[str, str, int, int], ...]
    n_images: int
    min_span: int
    max_span: int


def scene_arrays(scenes: Sequence[Scene], device: torch.device | str | None = None) -> ObjectArrays:
    """Flatten scenes into ``ObjectArrays`` (one host-to-device copy)."""
    shape_ix = {s: i for i, s in enumerate(SHAPES)}
    colour_ix = {c: i for i, c in enumerate(COLOUR_NAMES)}
    rows = sorted(
        (shape_ix[o.shape], o.size == "large", b, colour_ix[o.colour], o.x, o.y, s.grid * SUB)
        for b, s in enumerate(scenes)
        for o in s.objects
    )
    groups, start = [], 0
    for (si, large), run in itertools.groupby(rows, key=lambda row: row[:2]):
        count = sum(1 for _ in run)
        groups.append((SHAPES[si], SIZES[int(large)], start, count))
        start += count
    t = torch.tensor([row[2:] for row in rows], dtype=torch.int64).reshape(-1, 5).to(device)
    grids = [s.grid for s in scenes] or [3]
    return ObjectArrays(*t.unbind(1), tuple(groups), len(scenes), min(grids) * SUB, max(grids) * SUB)


_LUT = torch.tensor([BACKGROUND, *COLOURS.values()], dtype=torch.uint8)
# Canvas values: (1 + colour index) << 24 | B << 16 | G << 8 | R; the background has index 0, so any object
# wins an amax against it, and the low three bytes of a little-endian int32 are R, G, B.
_PACKED = torch.tensor([(i << 24) | (b << 16) | (g << 8) | r for i, (r, g, b) in enumerate(_LUT.tolist())])


def _unpack(canvas: torch.Tensor) -> torch.Tensor:
    """int32 ``[B, H, W]`` packed canvas -> uint8 ``[B, 3, H, W]`` RGB."""
    if sys.byteorder == "little":
        return canvas.contiguous().view(torch.uint8).view(*canvas.shape, 4).permute(0, 3, 1, 2)[:, :3].contiguous()
    return torch.stack([((canvas >> s) & 255).to(torch.uint8) for s in (0, 8, 16)], 1)


def render_arrays(a: ObjectArrays, size: int = 64, device: torch.device | str | None = None) -> torch.Tensor:
    """Render to ``uint8 [n_images, 3, size, size]`` on ``device`` (default: where ``a`` lives).

    Pixel ``(i, j)`` has its centre at ``((j + 0.5) / size, (i + 0.5) / size)`` of the board; every
    coordinate is scaled by ``2 * size`` so the inside tests are integer. Each (shape, size) group is
    tested on a square patch of pixels around its objects, and the patches are scattered with ``amax``
    into a padded canvas of packed colours: the result does not depend on the scatter order (where
    objects overlap, the higher colour index wins)."""
    dev = torch.device(device) if device is not None else a.x.device
    margin = 4  # objects lie inside the board (Scene checks), so patches overhang it by at most 3 pixels
    side = size + 2 * margin
    packed = _PACKED.to(dev, torch.int32)
    canvas = torch.full((a.n_images * side * side,), int(_PACKED[0]), dtype=torch.int32, device=dev)
    for shape, size_name, start, count in a.groups:
        rad = RADIUS[size_name]
        p = math.ceil(2 * rad * size / a.min_span) + 3  # pixels per patch side
        # |u|, |v| <= 2 * span * (p + 2) on a patch, squared in circles and rings
        dtype = torch.int32 if 2 * (2 * a.max_span * (p + 2)) ** 2 < 2**31 else torch.int64
        sl = slice(start, start + count)
        x, y, span = a.x[sl].to(dev), a.y[sl].to(dev), a.span[sl].to(dev)
        ox = torch.div((x - rad) * size, span, rounding_mode="floor") - 1  # first pixel column of the patch
        oy = torch.div((y - rad) * size, span, rounding_mode="floor") - 1
        ar = torch.arange(p, device=dev)
        u = ((2 * (ox[:, None] + ar) + 1) * span[:, None] - 2 * size * x[:, None]).to(dtype)
        v = ((2 * (oy[:, None] + ar) + 1) * span[:, None] - 2 * size * y[:, None]).to(dtype)
        inside = shape_mask(shape, u[:, None, :], v[:, :, None], 2 * size * rad)
        base = a.image[sl].to(dev) * (side * side) + (oy + margin) * side + ox + margin
        idx = base[:, None, None] + (ar[:, None] * side + ar[None, :])
        val = inside.to(torch.int32) * packed[a.colour[sl].to(dev) + 1][:, None, None]
        canvas.scatter_reduce_(0, idx.reshape(-1), val.reshape(-1), reduce="amax")
    crop = canvas.view(a.n_images, side, side)[:, margin : margin + size, margin : margin + size]
    return _unpack(crop)


def render(scenes: Sequence[Scene], size: int = 64, device: torch.device | str | None = None) -> torch.Tensor:
    """Render scenes to ``uint8 [B, 3, size, size]`` (batched torch ops; pass ``device="cuda"`` on a GPU)."""
    return render_arrays(scene_arrays(scenes, device), size, device)


def classify_colours(rgb: np.ndarray) -> np.ndarray:
    """Nearest palette entry per pixel of ``[..., 3]`` RGB: 0 = background, 1 + index into ``COLOURS``."""
    lut = _LUT.numpy().astype(np.int32)
    d = ((rgb[..., None, :].astype(np.int32) - lut) ** 2).sum(-1)
    return d.argmin(-1)


# ----------------------------------------------------------------------------------------------------
# Video model
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# Video question families (tracks are named by their unique shape)
# ----------------------------------------------------------------------------------------------------


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


def caption(scene: Scene) -> tuple[str, str]:
    """(prompt, description) of a scene for captioning, an auxiliary training task: every object's size,
    colour, shape and position in reading order, so one example supervises every object at once."""
    objects = ", ".join(f"{o.size} {o.name} {scene.position(o)}" for o in scene.objects)
    return "Describe the image.", (objects or "nothing") + "."


def video_caption(tl: Timeline) -> tuple[str, str]:
    """(prompt, description) of a clip: the first frame's objects, then every event in order."""
    _, start = caption(timeline_frames(tl)[0])
    events = "".join(f" Then {e.phrase}." for e in timeline_events(tl))
    return "Describe the video.", start + events


def render_timeline(tl: Timeline, size: int = 64, device: torch.device | str | None = None) -> torch.Tensor:
    """All frames of a clip: ``uint8 [n_frames, 3, size, size]``."""
    return render(timeline_frames(tl), size, device)


# ----------------------------------------------------------------------------------------------------
# In-memory batches for training
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBatch:
    images: torch.Tensor  # uint8 [B, 3, H, W]
    scenes: tuple[Scene, ...]
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class VideoBatch:
    videos: tuple[torch.Tensor, ...]  # each uint8 [T_i, 3, H, W]
    timelines: tuple[Timeline, ...]
    questions: tuple[tuple[Question, ...], ...]


def image_batch(
    n: int,
    rng: np.random.Generator | int,
    difficulty: ImageDifficulty = ImageDifficulty(),
    *,
    split: str | None = "train",
    size: int = 64,
    device: torch.device | str | None = None,
) -> ImageBatch:
    """``n`` (scene, question) pairs of ``split`` rendered to ``uint8 [n, 3, size, size]`` on ``device``.
    Pass one ``np.random.Generator`` (e.g. ``split_rng(seed, "image", "train")``) across calls."""
    gen = _as_rng(rng)
    items = [sample_image_item(gen, difficulty, split) for _ in range(n)]
    scenes = tuple(s for s, _ in items)
    return ImageBatch(render(scenes, size, device), scenes, tuple(q for _, q in items))


def video_batch(
    n: int,
    rng: np.random.Generator | int,
    difficulty: VideoDifficulty | None = None,
    *,
    split: str | None = "train",
    n_questions: int = 1,
    size: int = 64,
    device: torch.device | str | None = None,
) -> VideoBatch:
    """``n`` clips of ``split`` with ``n_questions`` questions each; all frames rendered in one batch."""
    gen = _as_rng(rng)
    items = [sample_video_item(gen, difficulty, split, n_questions) for _ in range(n)]
    frames = [timeline_frames(tl) for tl, _ in items]
    flat = render([s for f in frames for s in f], size, device)
    videos = tuple(torch.split(flat, [len(f) for f in frames]))
    return VideoBatch(videos, tuple(tl for tl, _ in items), tuple(qs for _, qs in items))


# ----------------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    id: str
    image: Path
    scene: Scene
    question: Question
    extra: dict = field(default_factory=dict, compare=False)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def write_image_set(
    root: str | Path,
    n: int,
    split: str,
    seed: int,
    *,
    difficulty: ImageDifficulty = ImageDifficulty(),
    size: int = 64,
    chunk: int = 256,
) -> Path:
    """Write ``n`` images of ``split``: ``root/{split}.jsonl`` and ``root/images/{split}/{id}.png``."""
    from PIL import Image

    _check_split(split)
    root = Path(root)
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = split_rng(seed, "image", split)
    items = [sample_image_item(rng, difficulty, split) for _ in range(n)]
    lines = []
    for start in range(0, n, chunk):
        part = items[start : start + chunk]
        pixels = render([s for s, _ in part], size).permute(0, 2, 3, 1).numpy()
        for k, (scene, q) in enumerate(part):
            i = start + k
            ident = f"{split}-{i:06d}"
            rel = f"images/{split}/{ident}.png"
            Image.fromarray(pixels[k]).save(root / rel, format="PNG")
            rec = {"id": ident, "image": rel, "split": split, "size": size, **q.to_json(), "scene": scene.to_json()}
            lines.append(json.dumps(rec, sort_keys=True))
    path = root / f"{split}.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def load_image_set(root: str | Path, split: str) -> list[ImageRecord]:
    """Read back ``root/{split}.jsonl`` (scenes and questions as objects, image paths absolute)."""
    root = Path(root)
    records = []
    for line in (root / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        q = Question(d["family"], d["question"], tuple(d["options"]), d["answer"], tuple(d["params"].items()))
        records.append(ImageRecord(d["id"], root / d["image"], Scene.from_json(d["scene"]), q, d))
    return records


def encode_mp4(frames: np.ndarray, path: str | Path, fps: float = 2.0) -> None:
    """Write ``uint8 [T, H, W, 3]`` RGB frames as H.264 (libx264, qp 0 = lossless in YUV, ``yuv444p``,
    one thread so the bytes are reproducible) in MP4 with PyAV."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"qp": "0", "preset": "medium", "threads": "1"})
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv444p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _srt_time(ms: int) -> str:
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def srt_text(tl: Timeline, fps: float = 2.0, max_cue_s: float = 2.0) -> str:
    """One SRT cue per frame with events (their phrases joined), lasting until the next cue, at most
    ``max_cue_s`` and never past the end of the clip. "" when the clip has no events."""
    by_frame: dict[int, list[Event]] = {}
    for e in timeline_events(tl):
        by_frame.setdefault(e.frame, []).append(e)
    frames = sorted(by_frame)
    rate = Fraction(fps).limit_denominator(1001)
    end_ms = round(Fraction(tl.n_frames) / rate * 1000)
    cues = []
    for i, f in enumerate(frames):
        start = round(Fraction(f) / rate * 1000)
        nxt = round(Fraction(frames[i + 1]) / rate * 1000) if i + 1 < len(frames) else end_ms
        end = min(nxt, start + round(max_cue_s * 1000), end_ms)
        text = " ".join(e.phrase[0].upper() + e.phrase[1:] + "." for e in by_frame[f])
        cues.append(
            f'{i + 1}\n{_srt_time(start)} --> {_srt_time(end)}\n<font color="white" size=".72c">{text}</font>\n'
        )
    return "\n".join(cues)


def _duration_class(n_frames: int) -> str:
    return "short" if n_frames < 16 else "medium" if n_frames < 24 else "long"


def _sub_category(tl: Timeline) -> str:
    kinds = sorted({e.kind for e in timeline_events(tl)})
    return ", ".join(kinds) if kinds else "static"


def write_video_set(
    root: str | Path,
    n_videos: int,
    split: str,
    seed: int,
    *,
    fps: float = 2.0,
    size: int = 64,
    difficulty: VideoDifficulty | None = None,
    subtitles: bool = True,
) -> Path:
    """Write ``n_videos`` clips of ``split`` in the Video-MME Hugging Face layout under ``root`` (one split
    per root): the parquet (3 questions per video), ``data/{videoID}.mp4``, ``subtitle/{videoID}.srt``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_split(split)
    root = Path(root)
    for sub in ("videomme", "data", "subtitle"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = split_rng(seed, "video", split)
    width = max(3, len(str(n_videos)))
    rows: dict[str, list] = {c: [] for c in VIDEOMME_COLUMNS}
    for i in range(n_videos):
        tl, questions = sample_video_item(rng, difficulty, split, 3)
        video_id = f"{i + 1:0{width}d}"
        vid = f"syn{_SPLIT_CODE[split]}{i:05d}"
        frames = render_timeline(tl, size).permute(0, 2, 3, 1).numpy()
        encode_mp4(frames, root / "data" / f"{vid}.mp4", fps)
        srt = srt_text(tl, fps)
        if subtitles and srt:
            (root / "subtitle" / f"{vid}.srt").write_text(srt, encoding="utf-8")
        for j, q in enumerate(questions):
            values = {
                "video_id": video_id,
                "duration": _duration_class(tl.n_frames),
                "domain": DOMAIN,
                "sub_category": _sub_category(tl),
                "url": f"synthetic://vlmzip/{split}/seed{seed}/{i}",
                "videoID": vid,
                "question_id": f"{video_id}-{j + 1}",
                "task_type": q.family,
                "question": q.text,
                "options": list(q.options),
                "answer": q.answer,
            }
            for c in VIDEOMME_COLUMNS:
                rows[c].append(values[c])
    schema = pa.schema([(c, pa.list_(pa.string()) if c == "options" else pa.string()) for c in VIDEOMME_COLUMNS])
    path = root / VIDEOMME_PARQUET
    pq.write_table(pa.table(rows, schema=schema), path)
    return path


def split_counts(n: int) -> dict[str, int]:
    """How the CLI divides ``n`` items: validation and test ``n // 10`` each, train the rest."""
    return {"train": n - 2 * (n // 10), "validation": n // 10, "test": n // 10}


def write_all(
    out: str | Path,
    n_images: int,
    n_videos: int,
    seed: int,
    *,
    size: int = 64,
    fps: float = 2.0,
    subtitles: bool = True,
) -> dict:
    """All splits: ``out/image/{split}.jsonl`` + ``out/image/images/{split}/*.png`` and
    ``out/video/{split}/`` in the Video-MME layout; ``out/manifest.json`` records the arguments."""
    out = Path(out)
    manifest = {"seed": seed, "size": size, "fps": fps, "subtitles": subtitles, "images": {}, "videos": {}}
    for split, k in split_counts(n_images).items():
        if n_images:
            write_image_set(out / "image", k, split, seed, size=size)
            manifest["images"][split] = k
    for split, k in split_counts(n_videos).items():
        if n_videos:
            write_video_set(out / "video" / split, k, split, seed, fps=fps, size=size, subtitles=subtitles)
            manifest["videos"][split] = k
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmzip.eval.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--images", type=int, default=0, help="images over all splits (80/10/10)")
    p.add_argument("--videos", type=int, default=0, help="videos over all splits (80/10/10), 3 questions each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image / frame side in pixels")
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--no-subtitles", action="store_true")
    args = p.parse_args(argv)
    manifest = write_all(
        args.out, args.images, args.videos, args.seed, size=args.size, fps=args.fps, subtitles=not args.no_subtitles
    )
    print(json.dumps(manifest, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
