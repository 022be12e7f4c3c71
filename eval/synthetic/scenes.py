"""The vocabulary and geometry of the synthetic scenes, the scene model, and the seeds and splits that every
sampler draws from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vlmzip.eval.synthetic.video import Timeline

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
_KIND_CODE = {"image": 1, "video": 2}
_POSITIONS3 = (
    ("top left", "top middle", "top right"),
    ("middle left", "center", "middle right"),
    ("bottom left", "bottom middle", "bottom right"),
)


def position_name(row: int, col: int, grid: int = 3) -> str:
    """Name of a grid cell: "top left" ... "bottom right" on a 3x3 grid, else "row 2, column 4"."""
    if grid == 3:
        return _POSITIONS3[row][col]
    return f"row {row + 1}, column {col + 1}"


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
