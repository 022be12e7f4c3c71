"""Image question families, the image sampler's difficulty knobs and curriculum, and scene sampling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vlmzip.eval.synthetic.questions import Question, _all_positions, _count_options, _mc, _pick, _unique_by
from vlmzip.eval.synthetic.scenes import (
    COLOUR_NAMES,
    PLURALS,
    RELATIONS,
    SHAPES,
    SUB,
    Obj,
    Scene,
    _slack,
    content_split,
)


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


def caption(scene: Scene) -> tuple[str, str]:
    """(prompt, description) of a scene for captioning, an auxiliary training task: every object's size,
    colour, shape and position in reading order, so one example supervises every object at once."""
    objects = ", ".join(f"{o.size} {o.name} {scene.position(o)}" for o in scene.objects)
    return "Describe the image.", (objects or "nothing") + "."
